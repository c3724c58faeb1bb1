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
    let count = move || errors.with(|e| e.iter().count());
    view! {
        <p role="alert" data-testid="load-error" class="rounded bg-red-50 p-3 text-red-700">
            "Could not load this list (" {count} " error). It reloads on the next change."
        </p>
    }
}
