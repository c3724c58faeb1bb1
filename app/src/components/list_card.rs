//! The card both lists are shown in.

use std::hash::Hash;

use leptos::prelude::*;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error_template::ErrorTemplate;
use crate::model::Listed;

/// A titled card showing one list: `children` (a form, a notice) under the title, a loading
/// line until the first result, the shared error view if it fails, else
/// `<ul data-testid={list_id}>` with one `row` per item. Rows are keyed by their whole item, so
/// a refetch re-renders only the rows that changed: an open edit form elsewhere in the list
/// keeps what was typed into it.
#[component]
pub fn ListCard<T, R, V>(
    /// Heading of the card.
    title: &'static str,
    /// `data-testid` of the `<ul>`.
    list_id: &'static str,
    /// The list, refetched on every change.
    items: Resource<Result<Listed<T>, ServerFnError>>,
    /// Renders one item as an `<li>`.
    row: R,
    /// Shown between the title and the list.
    #[prop(optional)]
    children: Option<Children>,
) -> impl IntoView
where
    T: Clone + Eq + Hash + Send + Sync + Serialize + DeserializeOwned + 'static,
    R: Fn(T) -> V + Copy + Send + Sync + 'static,
    V: IntoView + 'static,
{
    let current = move || {
        items
            .get()
            .and_then(Result::ok)
            .map(|snapshot| snapshot.items.clone())
            .unwrap_or_default()
    };
    view! {
        <section class="rounded-lg bg-white p-6 shadow">
            <h2 class="mb-4 text-xl font-semibold">{title}</h2>
            {children.map(|children| children())}
            <Transition fallback=|| view! { <p class="text-slate-500">"Loading…"</p> }>
                <ErrorBoundary fallback=|errors| view! { <ErrorTemplate errors /> }>
                    {move || items.get().map(|result| result.map(|_| ()))}
                    <ul data-testid=list_id class="divide-y divide-slate-200">
                        <For each=current key=Clone::clone children=row />
                    </ul>
                </ErrorBoundary>
            </Transition>
        </section>
    }
}
