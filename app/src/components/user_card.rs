//! The users card (the tutorial's `UserCard`).

use leptos::prelude::*;

use crate::error_template::ErrorTemplate;
use crate::model::{Snapshot, User};

/// Lists every user as `fname lname - username`.
#[component]
pub fn UserCard(users: Resource<Result<Snapshot<User>, ServerFnError>>) -> impl IntoView {
    view! {
        <section class="rounded-lg bg-white p-6 shadow">
            <h2 class="mb-4 text-xl font-semibold">"Users"</h2>
            <Transition fallback=|| view! { <p class="text-slate-500">"Loading users…"</p> }>
                <ErrorBoundary fallback=|errors| view! { <ErrorTemplate errors /> }>
                    {move || Suspend::new(async move {
                        users
                            .await
                            .map(|snapshot| {
                                view! {
                                    <ul data-testid="user-list" class="divide-y divide-slate-200">
                                        {snapshot
                                            .items
                                            .into_iter()
                                            .map(|user| {
                                                // One text node, so the raw HTML reads
                                                // "fname lname - username".
                                                let line = format!(
                                                    "{} {} - {}",
                                                    user.fname,
                                                    user.lname,
                                                    user.username,
                                                );
                                                view! {
                                                    <li data-testid="user" data-id=user.id class="py-2">
                                                        {line}
                                                    </li>
                                                }
                                            })
                                            .collect_view()}
                                    </ul>
                                }
                            })
                    })}
                </ErrorBoundary>
            </Transition>
        </section>
    }
}
