//! The users card: the list of users, a form to add one, and on every row an inline edit form
//! and a delete with a confirmation step.
//!
//! Every form is a [`PostForm`]: with WASM it posts in the background; without, it is a plain
//! form post and the server sends the browser back to the page. Either way the list changes
//! only through the event stream. The row forms use `<details>`, so opening them needs no
//! script either.

use leptos::prelude::*;
use leptos::server_fn::ServerFn;

use crate::components::form::{failure, outcome, Notice, Outcome, PostForm, UserForm};
use crate::components::list_card::ListCard;
use crate::edit::{AddUser, DeleteUser, EditUser};
use crate::model::{Listed, User};

/// Lists every user as `fname lname - username`, with the forms that change them.
#[component]
pub fn UserCard(users: Resource<Result<Listed<User>, ServerFnError>>) -> impl IntoView {
    // One outcome per kind for all rows: a failure outlives the row it came from (a user
    // deleted meanwhile disappears from the list, its notice stays).
    let edit = outcome(EditUser::PATH);
    let delete = outcome(DeleteUser::PATH);
    let errors = Signal::derive(move || {
        [failure(edit), failure(delete)]
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
    let add = outcome(AddUser::PATH);
    let error = Signal::derive(move || failure(add));
    view! {
        <div data-testid="add-user" class="mb-4">
            <UserForm path=AddUser::PATH outcome=add error button="Add user" />
            <Notice errors=Signal::derive(move || error.get().into_iter().collect()) />
        </div>
    }
}

fn user_row(user: User, edit: Outcome, delete: Outcome) -> impl IntoView {
    // One text node, so the raw HTML reads "fname lname - username".
    let line = format!("{} {} - {}", user.fname, user.lname, user.username);
    let id = user.id.clone();
    let error = Signal::derive({
        let id = id.clone();
        move || failure(edit).filter(|e| e.id.as_deref() == Some(id.as_str()))
    });
    let has_error = move || error.get().is_some_and(|e| !e.fields().is_empty());
    let confirm = format!("Delete {}?", user.username);
    let (row_id, delete_id) = (id.clone(), id.clone());
    view! {
        <li data-testid="user-row" data-id=row_id class="py-2">
            <span data-testid="user" data-id=id>
                {line}
            </span>
            <div class="mt-1 flex flex-wrap gap-x-4 gap-y-2 text-sm">
                <details data-testid="edit-user" open=has_error class="open:w-full">
                    <summary class="cursor-pointer text-slate-600">"Edit"</summary>
                    <UserForm path=EditUser::PATH outcome=edit error user button="Save" />
                </details>
                <details data-testid="delete-user">
                    <summary class="cursor-pointer text-red-700">"Delete"</summary>
                    <PostForm
                        path=DeleteUser::PATH
                        outcome=delete
                        id=Some(delete_id)
                        class="mt-2 flex items-center gap-2"
                    >
                        <span>{confirm}</span>
                        <button type="submit" class="rounded bg-red-700 px-2 py-0.5 text-white">
                            "Confirm delete"
                        </button>
                    </PostForm>
                </details>
            </div>
        </li>
    }
}
