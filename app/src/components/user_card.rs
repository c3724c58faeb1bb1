//! The users card (the tutorial's `UserCard`): the list, a form to add a user, and on every
//! row an inline edit form and a delete with a confirmation step.
//!
//! Every form is an [`ActionForm`]: with WASM it posts in the background; without, it is a
//! plain form post and the server sends the browser back to the page. Either way the list
//! changes only through the event stream. The row forms use `<details>`, so opening them needs
//! no script either.

use leptos::form::ActionForm;
use leptos::html::Form;
use leptos::prelude::*;

use crate::components::form::{last_error, Notice, TextField};
use crate::components::list_card::ListCard;
use crate::edit::{AddUser, DeleteUser, EditError, EditUser, Field};
use crate::model::{Listed, User};

/// Lists every user as `fname lname - username`, with the forms that change them.
#[component]
pub fn UserCard(users: Resource<Result<Listed<User>, ServerFnError>>) -> impl IntoView {
    // One action per kind for all rows: a failure outlives the row it came from (a user
    // deleted meanwhile disappears from the list, its notice stays).
    let edit = ServerAction::<EditUser>::new();
    let delete = ServerAction::<DeleteUser>::new();
    let errors = Signal::derive(move || {
        [last_error(&edit.value()), last_error(&delete.value())]
            .into_iter()
            .flatten()
            .collect::<Vec<_>>()
    });
    let row = move |user: User| user_row(user, edit, delete);
    view! {
        <ListCard title="Users" list_id="user-list" items=users row>
            <AddUserForm />
            <Notice errors />
        </ListCard>
    }
}

/// Adds a user; cleared once the user is added.
#[component]
fn AddUserForm() -> impl IntoView {
    let add = ServerAction::<AddUser>::new();
    let error = Signal::derive(move || last_error(&add.value()));
    let form = NodeRef::<Form>::new();
    Effect::new(move |_| {
        if let (Some(Ok(_)), Some(form)) = (add.value().get(), form.get()) {
            form.reset();
        }
    });
    view! {
        <ActionForm action=add node_ref=form attr:data-testid="add-user" attr:class="mb-4">
            <div class="flex flex-wrap items-start gap-3">
                <TextField field=Field::Fname label="First name" error />
                <TextField field=Field::Lname label="Last name" error />
                <TextField field=Field::Username label="Username" error />
                <button
                    type="submit"
                    disabled=move || add.pending().get()
                    class="mt-6 rounded bg-slate-800 px-3 py-1 text-white disabled:opacity-50"
                >
                    "Add user"
                </button>
            </div>
            <Notice errors=Signal::derive(move || error.get().into_iter().collect()) />
        </ActionForm>
    }
}

fn user_row(
    user: User,
    edit: ServerAction<EditUser>,
    delete: ServerAction<DeleteUser>,
) -> impl IntoView {
    // One text node, so the raw HTML reads "fname lname - username".
    let line = format!("{} {} - {}", user.fname, user.lname, user.username);
    let id = user.id.clone();
    let error = Signal::derive({
        let id = id.clone();
        move || last_error(&edit.value()).filter(|e| e.id.as_deref() == Some(id.as_str()))
    });
    let has_error = move || {
        error
            .get()
            .is_some_and(|e: EditError| !e.fields().is_empty())
    };
    let confirm = format!("Delete {}?", user.username);
    let (row_id, edit_id, delete_id) = (id.clone(), id.clone(), id.clone());
    view! {
        <li data-testid="user-row" data-id=row_id class="py-2">
            <span data-testid="user" data-id=id>
                {line}
            </span>
            <div class="mt-1 flex flex-wrap gap-x-4 gap-y-2 text-sm">
                <details data-testid="edit-user" open=has_error class="open:w-full">
                    <summary class="cursor-pointer text-slate-600">"Edit"</summary>
                    <ActionForm action=edit attr:class="mt-2 flex flex-wrap items-start gap-3">
                        <input type="hidden" name="id" value=edit_id />
                        <TextField field=Field::Fname label="First name" value=user.fname error />
                        <TextField field=Field::Lname label="Last name" value=user.lname error />
                        <TextField
                            field=Field::Username
                            label="Username"
                            value=user.username
                            error
                        />
                        <button type="submit" class="mt-6 rounded bg-slate-800 px-3 py-1 text-white">
                            "Save"
                        </button>
                    </ActionForm>
                </details>
                <details data-testid="delete-user">
                    <summary class="cursor-pointer text-red-700">"Delete"</summary>
                    <ActionForm action=delete attr:class="mt-2 flex items-center gap-2">
                        <input type="hidden" name="id" value=delete_id />
                        <span>{confirm}</span>
                        <button type="submit" class="rounded bg-red-700 px-2 py-0.5 text-white">
                            "Confirm delete"
                        </button>
                    </ActionForm>
                </details>
            </div>
        </li>
    }
}
