//! Pieces the forms share: the form that posts to a server function, a labelled text input
//! with its error, and a card's notice.
//!
//! [`PostForm`] is a plain `<form method="post">` aimed at a server function, so without WASM
//! the browser posts it and the server sends it back to the page. With WASM one small handler
//! posts the same fields with `fetch` and keeps the outcome in a signal. Leptos' `ActionForm`
//! would do the same, but it is generic over each server function: the four forms' copies of
//! its client code (argument encoding, the action's signals, error decoding) grew the page's
//! WASM by more than the page's whole size budget allows. The server functions themselves are
//! ordinary Leptos server functions and work with `ActionForm` / `ServerAction` unchanged.

use leptos::prelude::*;
use leptos::server_fn::error::ServerFnUrlError;

use crate::edit::{EditError, Field};

/// How a form's last submit ended: `None` before any.
pub type Outcome = RwSignal<Option<Result<(), EditError>>>;

/// The outcome of the last post to server function `path`: on a page the server sent back after
/// a form posted without scripts, the error that post ended with.
pub fn outcome(path: &'static str) -> Outcome {
    let from_url = crate::request::query()
        .and_then(|query| error_in_query(&query, path))
        .map(Err);
    RwSignal::new(from_url)
}

/// The error of a post to `path` that Leptos put in the URL it sent the browser back to
/// (`__path=<path>&__err=<encoded error>`); the first of each counts.
fn error_in_query(query: &str, path: &str) -> Option<EditError> {
    let mut pairs = form_urlencoded::parse(query.as_bytes());
    let posted_to = pairs.clone().find(|(key, _)| key == "__path")?.1;
    let error = pairs.find(|(key, _)| key == "__err")?.1;
    (posted_to == path).then(|| ServerFnUrlError::<EditError>::decode_err(&error))
}

/// The error `outcome` ended with, if it failed (tracked).
pub fn failure(outcome: Outcome) -> Option<EditError> {
    outcome.get().and_then(Result::err)
}

/// A form posting its fields to server function `path`: in the background with WASM (the
/// result goes to `outcome`, and the form is reset after a success), as a plain post without.
/// With `id`, it posts a hidden `id` field too (the document it is about).
#[component]
pub fn PostForm(
    /// The server function's URL, e.g. `AddUser::PATH`.
    path: &'static str,
    /// Where the result goes.
    outcome: Outcome,
    /// The form's classes.
    class: &'static str,
    /// The `_id` of the document the form is about.
    #[prop(default = None)]
    id: Option<String>,
    /// The inputs and buttons.
    children: Children,
) -> impl IntoView {
    let on_submit = move |event: leptos::ev::SubmitEvent| {
        #[cfg(feature = "hydrate")]
        browser::submit(&event, path, outcome);
        #[cfg(not(feature = "hydrate"))]
        let _ = (event, outcome);
    };
    view! {
        <form method="post" action=path class=class on:submit=on_submit>
            {id.map(|id| view! { <input type="hidden" name="id" value=id /> })}
            {children()}
        </form>
    }
}

/// A user's three fields and a submit button, posting to `path`: the add form (no `id`, empty)
/// and each row's edit form (with the user's `id` and names).
#[component]
pub fn UserForm(
    /// `AddUser::PATH` or `EditUser::PATH`.
    path: &'static str,
    /// Where the result goes.
    outcome: Outcome,
    /// The error shown by the fields (the outcome's, for this form).
    #[prop(into)]
    error: Signal<Option<EditError>>,
    /// The user edited, if any: its id and starting values.
    #[prop(optional)]
    user: Option<crate::model::User>,
    /// The button's text.
    button: &'static str,
) -> impl IntoView {
    let (id, fname, lname, username) = match user {
        Some(user) => (Some(user.id), user.fname, user.lname, user.username),
        None => (None, String::new(), String::new(), String::new()),
    };
    view! {
        <PostForm path outcome id class="mt-2 flex flex-wrap items-start gap-3">
            <TextField field=Field::Fname label="First name" value=fname error />
            <TextField field=Field::Lname label="Last name" value=lname error />
            <TextField field=Field::Username label="Username" value=username error />
            <button type="submit" class="mt-6 rounded bg-slate-800 px-3 py-1 text-white">
                {button}
            </button>
        </PostForm>
    }
}

/// A labelled text input named after `field`, with the field's error (if any) under it.
#[component]
pub fn TextField(
    /// The field; its name is the input's `name`.
    field: Field,
    /// The visible label.
    label: &'static str,
    /// The starting value.
    #[prop(optional, into)]
    value: String,
    /// The error the form's last submit got, if any.
    #[prop(into)]
    error: Signal<Option<EditError>>,
) -> impl IntoView {
    let message = move || {
        error
            .get()
            .and_then(|e| e.field(field))
            .map(|f| f.message())
    };
    view! {
        <label class="flex min-w-0 flex-1 flex-col gap-1 text-sm">
            <span class="text-slate-600">{label}</span>
            <input
                type="text"
                name=field.name()
                value=value
                autocomplete="off"
                aria-invalid=move || message().is_some().to_string()
                class="rounded border border-slate-300 px-2 py-1 text-base aria-[invalid=true]:border-red-500"
            />
            <Show when=move || message().is_some()>
                <span data-field-error=field.name() class="text-red-700">
                    {message}
                </span>
            </Show>
        </label>
    }
}

/// A card's notice: the text of each error that is not about fields (those are shown next to
/// them), e.g. a user deleted meanwhile or a refused request.
#[component]
pub fn Notice(
    /// The errors to show.
    #[prop(into)]
    errors: Signal<Vec<EditError>>,
) -> impl IntoView {
    let texts = move || {
        errors
            .get()
            .into_iter()
            .filter(|e| e.fields().is_empty())
            .map(|e| e.text())
            .collect::<Vec<_>>()
    };
    view! {
        <Show when=move || !texts().is_empty()>
            <p role="alert" data-testid="notice" class="mb-4 rounded bg-amber-50 p-3 text-amber-900">
                {move || texts().join(" ")}
            </p>
        </Show>
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::edit::Problem;

    #[test]
    fn an_error_in_the_url_belongs_to_its_function() {
        let error = EditError::new(Some("ab"), Problem::Gone);
        let url = ServerFnUrlError::new("/_server/delete_user", error.clone())
            .to_url("http://h/?x=1")
            .expect("url");
        let query = url.query().expect("query");
        assert_eq!(error_in_query(query, "/_server/delete_user"), Some(error));
        assert_eq!(error_in_query(query, "/_server/add_user"), None);
        assert_eq!(error_in_query("x=1", "/_server/delete_user"), None);
        let garbled = error_in_query("__path=%2Fp&__err=%%%", "/p").expect("decoded");
        assert_eq!(garbled.problem, Problem::Internal);
    }
}

#[cfg(feature = "hydrate")]
mod browser {
    use gloo_net::http::Request;
    use leptos::prelude::*;
    use wasm_bindgen::JsCast;
    use web_sys::{FormData, HtmlFormElement, UrlSearchParams};

    use super::Outcome;
    use crate::edit::{EditError, Problem};

    /// Posts the submitted form's fields to `path` in the background.
    pub(super) fn submit(event: &leptos::ev::SubmitEvent, path: &'static str, outcome: Outcome) {
        let Some(form) = event
            .target()
            .and_then(|target| target.dyn_into::<HtmlFormElement>().ok())
        else {
            return;
        };
        let fields = FormData::new_with_form(&form)
            .and_then(|data| UrlSearchParams::new_with_str_sequence_sequence(&data));
        let Ok(fields) = fields else {
            return; // the browser posts the form itself
        };
        event.prevent_default();
        let body = String::from(fields.to_string());
        leptos::task::spawn_local(async move {
            let result = post(path, body).await;
            if result.is_ok() {
                form.reset();
            }
            outcome.set(Some(result));
        });
    }

    /// One post of form fields; a refusal's JSON body is decoded into its [`EditError`].
    async fn post(path: &str, body: String) -> Result<(), EditError> {
        let unreachable = |_| EditError::new(None, Problem::Unreachable);
        let response = Request::post(path)
            .header("Accept", "application/json")
            .header("Content-Type", "application/x-www-form-urlencoded")
            .body(body)
            .map_err(unreachable)?
            .send()
            .await
            .map_err(unreachable)?;
        if response.ok() {
            return Ok(());
        }
        let text = response.text().await.unwrap_or_default();
        Err(serde_json::from_str(&text).unwrap_or_else(|_| EditError::new(None, Problem::Internal)))
    }
}
