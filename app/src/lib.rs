//! The live MongoDB view: Leptos components and server functions.
//!
//! The page is rendered on the server with the lists already in the HTML,
//! hydrates in the browser, subscribes to `/api/sse` from a stream position
//! that covers both lists' reads, and refetches the list each change names.

use leptos::either::Either;
use leptos::prelude::*;

pub mod api;
pub mod components;
pub mod edit;
pub mod error_template;
pub mod live;
pub mod model;
pub mod pages;
#[cfg(feature = "ssr")]
pub mod repo;
pub mod request;

/// The path of the home page, the only page.
pub const HOME: &str = "/";

/// The HTML document around the app (server only). Title, description and stylesheet are
/// plain tags here: one page needs no router or meta manager in the browser (leaving both out
/// took a quarter off the WASM).
pub fn shell(options: LeptosOptions) -> impl IntoView {
    view! {
        <!DOCTYPE html>
        <html lang="en">
            <head>
                <meta charset="utf-8" />
                <meta name="viewport" content="width=device-width, initial-scale=1" />
                <title>"Realtime users"</title>
                <meta name="description" content="A live view of a MongoDB database" />
                <link rel="stylesheet" id="leptos" href="/pkg/realtime.css" />
                <AutoReload options=options.clone() />
                <HydrationScripts options />
            </head>
            <body class="bg-slate-100 text-slate-900 antialiased">
                <App />
            </body>
        </html>
    }
}

/// The application: the live lists at [`HOME`], "Page not found." anywhere else (the server
/// answers those with 404).
#[component]
pub fn App() -> impl IntoView {
    let page = if request::path().as_deref() == Some(HOME) {
        Either::Left(view! { <pages::home::HomePage /> })
    } else {
        Either::Right(view! { <p class="p-6">"Page not found."</p> })
    };
    view! { <main class="mx-auto max-w-3xl p-6">{page}</main> }
}
