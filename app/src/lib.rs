//! The live MongoDB view: Leptos components and server functions.
//!
//! The page is rendered on the server with the lists already in the HTML,
//! hydrates in the browser, subscribes to `/api/sse` from a stream position
//! that covers both lists' reads, and refetches the list each change names.

use leptos::prelude::*;
use leptos_meta::{provide_meta_context, Meta, MetaTags, Stylesheet, Title};
use leptos_router::components::{Route, Router, Routes};
use leptos_router::{SsrMode, StaticSegment};

pub mod api;
pub mod components;
pub mod edit;
pub mod error_template;
pub mod live;
pub mod model;
pub mod pages;
#[cfg(feature = "ssr")]
pub mod repo;

/// The HTML document around the app (server only).
pub fn shell(options: LeptosOptions) -> impl IntoView {
    view! {
        <!DOCTYPE html>
        <html lang="en">
            <head>
                <meta charset="utf-8" />
                <meta name="viewport" content="width=device-width, initial-scale=1" />
                <AutoReload options=options.clone() />
                <HydrationScripts options />
                <MetaTags />
            </head>
            <body class="bg-slate-100 text-slate-900 antialiased">
                <App />
            </body>
        </html>
    }
}

/// The application: one page, the live lists.
#[component]
pub fn App() -> impl IntoView {
    provide_meta_context();
    view! {
        <Stylesheet id="leptos" href="/pkg/realtime.css" />
        <Title text="Realtime users" />
        <Meta name="description" content="A live view of a MongoDB database" />
        <Router>
            <main class="mx-auto max-w-3xl p-6">
                <Routes fallback=|| view! { <p class="p-6">"Page not found."</p> }>
                    // Async: the HTML is sent once both lists are read, with them in place, so the
                    // page is whole without scripts (no out-of-order chunks to swap in).
                    <Route path=StaticSegment("") view=pages::home::HomePage ssr=SsrMode::Async />
                </Routes>
            </main>
        </Router>
    }
}
