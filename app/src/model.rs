//! The data shown on the page, shared by the server (SSR, JSON routes) and
//! the browser (hydration, refetches).

use serde::{Deserialize, Serialize};

/// A user as listed on the page and by `GET /api/users`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    /// The `_id` as 24 hex digits.
    pub id: String,
    /// First name.
    pub fname: String,
    /// Last name.
    pub lname: String,
    /// User name.
    pub username: String,
}

/// A device as listed on the page and by `GET /api/lockDevices`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Device {
    /// The `_id` as 24 hex digits.
    pub id: String,
    /// Display name.
    pub name: String,
    /// Kind of device, e.g. `"lock"` or `"camera"`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Whether the device is locked.
    pub locked: bool,
}

/// A list read at a known position of the live event stream: subscribing from `position`
/// delivers every change committed after the list was read, so nothing falls in between.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot<T> {
    /// The items, in `_id` order.
    pub items: Vec<T>,
    /// The event-stream position (an SSE event id) the list is at least as new as; `None` while
    /// the server has no change stream open yet.
    pub position: Option<String>,
}
