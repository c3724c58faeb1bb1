//! The one error view shown inside every `ErrorBoundary`.

use leptos::prelude::*;

/// Says that a list could not be loaded; during SSR it also sets the response status to 500.
/// Details stay in the server log.
#[component]
pub fn ErrorTemplate(errors: ArcRwSignal<Errors>) -> impl IntoView {
    #[cfg(feature = "ssr")]
    if let Some(response) = use_context::<leptos_axum::ResponseOptions>() {
        response.set_status(http::StatusCode::INTERNAL_SERVER_ERROR);
    }
    let count = move || errors.with(|e| errors_text(e.iter().count()));
    view! {
        <p role="alert" data-testid="load-error" class="rounded bg-red-50 p-3 text-red-700">
            "Could not load this list (" {count} "). It reloads on the next change."
        </p>
    }
}

/// "1 error", "2 errors".
fn errors_text(count: usize) -> String {
    match count {
        1 => "1 error".to_owned(),
        n => format!("{n} errors"),
    }
}

#[cfg(test)]
mod tests {
    use super::errors_text;

    #[test]
    fn the_error_count_agrees_with_its_noun() {
        assert_eq!(errors_text(1), "1 error");
        assert_eq!(errors_text(2), "2 errors");
    }
}
