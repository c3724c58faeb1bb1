//! Pieces the forms share: a labelled text input with its error, and a card's notice.

use leptos::prelude::*;

use crate::edit::{EditError, Field};

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

/// A card's notice: the text of `error` when it is not about fields (those are shown next to
/// them), e.g. a user deleted meanwhile or a refused request.
#[component]
pub fn Notice(
    /// The errors to show, newest action last.
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

/// The error an action's last call ended with, if it failed.
pub fn last_error<T>(value: &impl Get<Value = Option<Result<T, EditError>>>) -> Option<EditError> {
    value.get().and_then(Result::err)
}
