//! The users card (the tutorial's `UserCard`).

use leptos::prelude::*;

use crate::components::list_card::ListCard;
use crate::model::{Listed, User};

/// Lists every user as `fname lname - username`.
#[component]
pub fn UserCard(users: Resource<Result<Listed<User>, ServerFnError>>) -> impl IntoView {
    view! { <ListCard title="Users" list_id="user-list" items=users row=user_row /> }
}

fn user_row(user: User) -> impl IntoView {
    // One text node, so the raw HTML reads "fname lname - username".
    let line = format!("{} {} - {}", user.fname, user.lname, user.username);
    view! {
        <li data-testid="user" data-id=user.id class="py-2">
            {line}
        </li>
    }
}
