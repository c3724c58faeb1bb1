//! The home page: users and lock devices, kept live by the event stream.

use leptos::prelude::*;

use crate::api::{get_lock_devices, get_users};
use crate::components::device_panel::DevicePanel;
use crate::components::live_status::LiveStatus;
use crate::components::user_card::UserCard;
use crate::live::{covering, Live};

/// Renders both lists on the server (blocking resources, so the first HTML holds them), then
/// refetches each list when a change names it.
#[component]
pub fn HomePage() -> impl IntoView {
    let live = Live::provide();
    let (users_refetch, devices_refetch) = (live.users(), live.devices());
    let users = Resource::new_blocking(
        move || users_refetch.key(),
        move |_| async move {
            let users = get_users(users_refetch.after()).await;
            users_refetch.done();
            users
        },
    );
    let devices = Resource::new_blocking(
        move || devices_refetch.key(),
        move |_| async move {
            let devices = get_lock_devices(devices_refetch.after()).await;
            devices_refetch.done();
            devices
        },
    );
    // Subscribe (in the browser only; effects do not run on the server) from a position that
    // covers both server-rendered lists, so a change committed while the page loads still
    // reaches it. The subscription belongs to the page, not to the effect: the effect re-runs
    // on every refetch, and its cleanup would close the stream.
    let page = Owner::current().map(|owner| owner.downgrade());
    Effect::new(move |_| {
        if let (Some(Ok(users)), Some(Ok(devices))) = (users.get(), devices.get()) {
            let position = covering([users.position.as_deref(), devices.position.as_deref()]);
            let start = || live.start(position);
            match page.as_ref().and_then(WeakOwner::upgrade) {
                Some(owner) => owner.with(start),
                None => start(),
            }
        }
    });
    view! {
        <header class="mb-6 flex items-center justify-between">
            <h1 class="text-2xl font-bold">"Realtime users"</h1>
            <LiveStatus />
        </header>
        <div class="grid gap-6">
            <UserCard users />
            <DevicePanel devices />
        </div>
    }
}
