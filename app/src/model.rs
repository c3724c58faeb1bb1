//! The data shown on the page, shared by the server (SSR, JSON routes) and
//! the browser (hydration, refetches).

use std::ops::Deref;
use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Collection of users (also the `collection` of its change events).
pub const USERS: &str = "users";
/// Collection of devices (also the `collection` of its change events).
pub const DEVICES: &str = "devices";

/// A user as listed on the page and by `GET /api/users`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
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
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
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

/// `_id` as the contract writes it (in lists, JSON routes and change events): 24 hex digits for
/// an ObjectId, the string itself for a string, the value's BSON text otherwise.
#[cfg(feature = "ssr")]
pub fn id_text(id: &mongodb::bson::Bson) -> String {
    use mongodb::bson::Bson;
    match id {
        Bson::ObjectId(oid) => oid.to_hex(),
        Bson::String(s) => s.clone(),
        other => other.to_string(),
    }
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

/// A list as the server functions return it: a shared [`Snapshot`]. On the server it also
/// carries its JSON, serialized once when the snapshot was read, and serializes as those bytes,
/// so a thousand refetches of one snapshot cost one serialization and a thousand copies. In the
/// browser it is the decoded snapshot.
#[derive(Debug)]
pub struct Listed<T> {
    snapshot: Arc<Snapshot<T>>,
    #[cfg(feature = "ssr")]
    json: Option<Arc<serde_json::value::RawValue>>,
}

impl<T: Serialize> Listed<T> {
    /// Shares `snapshot` (and, on the server, serializes it now).
    pub fn new(snapshot: Snapshot<T>) -> Self {
        Self {
            #[cfg(feature = "ssr")]
            json: serde_json::value::to_raw_value(&snapshot)
                .ok()
                .map(Arc::from),
            snapshot: Arc::new(snapshot),
        }
    }
}

// Not derived: sharing needs no `T: Clone`.
impl<T> Clone for Listed<T> {
    fn clone(&self) -> Self {
        Self {
            snapshot: Arc::clone(&self.snapshot),
            #[cfg(feature = "ssr")]
            json: self.json.clone(),
        }
    }
}

impl<T> Deref for Listed<T> {
    type Target = Snapshot<T>;

    fn deref(&self) -> &Snapshot<T> {
        &self.snapshot
    }
}

impl<T: Serialize> Serialize for Listed<T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        #[cfg(feature = "ssr")]
        if let Some(json) = &self.json {
            return json.serialize(serializer);
        }
        self.snapshot.serialize(serializer)
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Listed<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Ok(Self {
            snapshot: Arc::new(Snapshot::deserialize(deserializer)?),
            #[cfg(feature = "ssr")]
            json: None,
        })
    }
}

#[cfg(all(test, feature = "ssr"))]
mod tests {
    use super::*;

    #[test]
    fn a_listed_snapshot_serializes_as_its_stored_json_and_round_trips() {
        let snapshot = Snapshot {
            items: vec![User {
                id: "ab".into(),
                fname: "Ada".into(),
                lname: "Lovelace".into(),
                username: "{\"$gt\": \"\"}".into(),
            }],
            position: Some("0a".into()),
        };
        let listed = Listed::new(snapshot.clone());
        let stored = listed.json.as_ref().map(|j| j.get().to_owned());
        let sent = serde_json::to_string(&listed).expect("serialize");
        assert_eq!(
            Some(sent.clone()),
            stored,
            "the stored bytes are what is sent"
        );
        assert_eq!(sent, serde_json::to_string(&snapshot).expect("plain"));
        let back: Listed<User> = serde_json::from_str(&sent).expect("deserialize");
        assert_eq!(*back, snapshot);
    }

    #[test]
    fn ids_are_written_as_the_contract_says() {
        use mongodb::bson::{oid::ObjectId, Bson};
        let oid = ObjectId::new();
        assert_eq!(id_text(&Bson::ObjectId(oid)), oid.to_hex());
        assert_eq!(id_text(&Bson::String("x".into())), "x");
        assert_eq!(id_text(&Bson::Int32(7)), "7");
    }
}
