//! The live / reconnecting indicator.

use leptos::prelude::*;

use crate::live::Live;

/// Shows whether the event stream is connected.
#[component]
pub fn LiveStatus() -> impl IntoView {
    let live = Live::expect();
    let state = move || live.status().as_str();
    let class = move || {
        let color = match live.status() {
            crate::live::Status::Live => "bg-emerald-500",
            crate::live::Status::Connecting | crate::live::Status::Reconnecting => "bg-amber-500",
        };
        format!("inline-block h-2.5 w-2.5 rounded-full {color}")
    };
    view! {
        <span data-testid="live-status" data-state=state class="flex items-center gap-2 text-sm">
            <span class=class></span>
            {state}
        </span>
    }
}
