//! The page's URL, on the server (the request) and in the browser (the location) alike.

/// The path.
pub fn path() -> Option<String> {
    #[cfg(feature = "ssr")]
    return leptos::prelude::use_context::<http::request::Parts>()
        .map(|parts| parts.uri.path().to_owned());
    #[cfg(all(feature = "hydrate", not(feature = "ssr")))]
    return leptos::prelude::window().location().pathname().ok();
    #[cfg(not(any(feature = "ssr", feature = "hydrate")))]
    None
}

/// The query string, without the `?`.
pub fn query() -> Option<String> {
    #[cfg(feature = "ssr")]
    return leptos::prelude::use_context::<http::request::Parts>()
        .and_then(|parts| parts.uri.query().map(str::to_owned));
    #[cfg(all(feature = "hydrate", not(feature = "ssr")))]
    return leptos::prelude::window()
        .location()
        .search()
        .ok()
        .map(|search| search.trim_start_matches('?').to_owned());
    #[cfg(not(any(feature = "ssr", feature = "hydrate")))]
    None
}
