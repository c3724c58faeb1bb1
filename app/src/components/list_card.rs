//! The card both lists are shown in.

use leptos::prelude::*;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error_template::ErrorTemplate;
use crate::model::Listed;

/// A titled card showing one list: a loading line until the first result, the shared error view
/// if it fails, else `<ul data-testid={list_id}>` with one `row` per item.
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
) -> impl IntoView
where
    T: Clone + Send + Sync + Serialize + DeserializeOwned + 'static,
    R: Fn(T) -> V + Copy + Send + Sync + 'static,
    V: IntoView + 'static,
{
    view! {
        <section class="rounded-lg bg-white p-6 shadow">
            <h2 class="mb-4 text-xl font-semibold">{title}</h2>
            <Transition fallback=|| view! { <p class="text-slate-500">"Loading…"</p> }>
                <ErrorBoundary fallback=|errors| view! { <ErrorTemplate errors /> }>
                    {move || Suspend::new(async move {
                        items
                            .await
                            .map(|snapshot| {
                                view! {
                                    <ul data-testid=list_id class="divide-y divide-slate-200">
                                        {snapshot.items.iter().cloned().map(row).collect_view()}
                                    </ul>
                                }
                            })
                    })}
                </ErrorBoundary>
            </Transition>
        </section>
    }
}
