//! The lock devices panel.

use leptos::prelude::*;

use crate::components::list_card::ListCard;
use crate::model::{Device, Listed};

/// Lists every lock device with its state.
#[component]
pub fn DevicePanel(devices: Resource<Result<Listed<Device>, ServerFnError>>) -> impl IntoView {
    view! { <ListCard title="Lock devices" list_id="device-list" items=devices row=device_row /> }
}

fn device_row(device: Device) -> impl IntoView {
    let (label, badge) = if device.locked {
        ("locked", "bg-emerald-100 text-emerald-800")
    } else {
        ("unlocked", "bg-amber-100 text-amber-800")
    };
    view! {
        <li
            data-testid="device"
            data-id=device.id
            data-locked=device.locked.to_string()
            class="flex items-center justify-between py-2"
        >
            <span>{device.name}</span>
            <span class=format!("rounded px-2 py-0.5 text-sm {badge}")>{label}</span>
        </li>
    }
}
