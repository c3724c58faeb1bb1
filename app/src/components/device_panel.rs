//! The lock devices panel.

use leptos::form::ActionForm;
use leptos::prelude::*;

use crate::components::form::{last_error, Notice};
use crate::components::list_card::ListCard;
use crate::edit::SetLock;
use crate::model::{Device, Listed};

/// Lists every lock device with its state and a button that flips it.
#[component]
pub fn DevicePanel(devices: Resource<Result<Listed<Device>, ServerFnError>>) -> impl IntoView {
    let lock = ServerAction::<SetLock>::new();
    let errors = Signal::derive(move || last_error(&lock.value()).into_iter().collect());
    let row = move |device: Device| device_row(device, lock);
    view! {
        <ListCard title="Lock devices" list_id="device-list" items=devices row>
            <Notice errors />
        </ListCard>
    }
}

fn device_row(device: Device, lock: ServerAction<SetLock>) -> impl IntoView {
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
            <ActionForm action=lock>
                <input type="hidden" name="id" value=form_id />
                <input type="hidden" name="locked" value=(!device.locked).to_string() />
                <button
                    type="submit"
                    data-testid="toggle-lock"
                    class="rounded border border-slate-300 px-2 py-0.5 text-sm"
                >
                    {action}
                </button>
            </ActionForm>
        </li>
    }
}
