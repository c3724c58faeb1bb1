//! The lock devices panel.

use leptos::prelude::*;

use crate::error_template::ErrorTemplate;
use crate::model::{Device, Snapshot};

/// Lists every lock device with its state.
#[component]
pub fn DevicePanel(devices: Resource<Result<Snapshot<Device>, ServerFnError>>) -> impl IntoView {
    view! {
        <section class="rounded-lg bg-white p-6 shadow">
            <h2 class="mb-4 text-xl font-semibold">"Lock devices"</h2>
            <Transition fallback=|| view! { <p class="text-slate-500">"Loading devices…"</p> }>
                <ErrorBoundary fallback=|errors| view! { <ErrorTemplate errors /> }>
                    {move || Suspend::new(async move {
                        devices
                            .await
                            .map(|snapshot| {
                                view! {
                                    <ul data-testid="device-list" class="divide-y divide-slate-200">
                                        {snapshot
                                            .items
                                            .into_iter()
                                            .map(|device| {
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
                                                        <span class=format!(
                                                            "rounded px-2 py-0.5 text-sm {badge}",
                                                        )>{label}</span>
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
