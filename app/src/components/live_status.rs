//! The live / reconnecting indicator.

use leptos::prelude::*;

use crate::live::use_live;

/// Shows whether the event stream is connected; `data-role` says whether this tab reads the
/// stream for the browser's tabs (`leader`), gets events from the tab that does (`follower`),
/// or reads its own (`own`).
#[component]
pub fn LiveStatus() -> impl IntoView {
    let live = use_live();
    let state = move || live.status().as_str();
    let role = move || live.role().map(crate::live::Role::as_str);
    let class = move || {
        let color = match live.status() {
            crate::live::Status::Live => "bg-emerald-500",
            crate::live::Status::Connecting | crate::live::Status::Reconnecting => "bg-amber-500",
        };
        format!("inline-block h-2.5 w-2.5 rounded-full {color}")
    };
    view! {
        <span data-testid="live-status" data-state=state data-role=role class="flex items-center gap-2 text-sm">
            <span class=class></span>
            {state}
        </span>
    }
}
