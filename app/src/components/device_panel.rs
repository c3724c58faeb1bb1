//! The lock devices panel.

use leptos::prelude::*;
use leptos::server_fn::ServerFn;

use crate::components::form::{failure, outcome, Notice, Outcome, PostForm};
use crate::components::list_card::ListCard;
use crate::edit::SetLock;
use crate::model::{Device, Listed};

/// Lists every lock device with its state and a button that flips it.
#[component]
pub fn DevicePanel(devices: Resource<Result<Listed<Device>, ServerFnError>>) -> impl IntoView {
    let lock = outcome(SetLock::PATH);
    let errors = Signal::derive(move || failure(lock).into_iter().collect());
    let row = move |device: Device| device_row(device, lock);
    view! {
        <ListCard title="Lock devices" list_id="device-list" items=devices row>
            <Notice errors />
        </ListCard>
    }
}

fn device_row(device: Device, lock: Outcome) -> impl IntoView {
    let (label, badge, action) = if device.locked {
        ("locked", "bg-emerald-100 text-emerald-800", "Unlock")
    } else {
        ("unlocked", "bg-amber-100 text-amber-800", "Lock")
    };
    let id = device.id;
    let form_id = id.clone();
    view! {
        <li
            data-testid="device"
            data-id=id
            data-locked=device.locked.to_string()
            class="flex items-center justify-between gap-3 py-2"
        >
            <span class="flex-1">{device.name}</span>
            <span class=format!("rounded px-2 py-0.5 text-sm {badge}")>{label}</span>
            <PostForm path=SetLock::PATH outcome=lock id=Some(form_id) class="">
                <input type="hidden" name="locked" value=(!device.locked).to_string() />
                <button
                    type="submit"
                    data-testid="toggle-lock"
                    class="rounded border border-slate-300 px-2 py-0.5 text-sm"
                >
                    {action}
                </button>
            </PostForm>
        </li>
    }
}
