//! Editing from the page: the server functions behind the forms (add, edit and delete a user,
//! lock or unlock a device), the validation they share, and the error every form shows.
//!
//! The page never updates its lists from a write's answer: a write commits, the change stream
//! carries it to every browser (this one included), and the lists refetch, exactly as for a
//! change made with `mongosh`.
//!
//! Each function is a plain `POST` of form fields (`application/x-www-form-urlencoded`), so it
//! works from an [`ActionForm`](leptos::form::ActionForm) and from a form posted without WASM.
//! A refusal is an [`EditError`], answered with its own status (400, 403, 404, 409, 413, 429;
//! see [`EditError::status`]); without WASM the browser is sent back to the page, which shows
//! it.

use std::fmt;

use leptos::prelude::*;
use leptos::server_fn::codec::JsonEncoding;
use leptos::server_fn::error::{FromServerFnError, ServerFnErrorErr};
use serde::{Deserialize, Serialize};

/// Most Unicode scalar values a name field may hold, after trimming.
pub const MAX_NAME_CHARS: usize = 64;

/// A field of the user forms.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Field {
    /// First name (`fname`).
    Fname,
    /// Last name (`lname`).
    Lname,
    /// User name (`username`).
    Username,
}

impl Field {
    /// The form input's `name`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Fname => "fname",
            Self::Lname => "lname",
            Self::Username => "username",
        }
    }
}

/// What is wrong with one field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FieldProblem {
    /// Empty after trimming.
    Required,
    /// Longer than [`MAX_NAME_CHARS`] after trimming.
    TooLong,
    /// Another user has this username.
    Taken,
}

/// One field's problem, shown next to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FieldError {
    /// The field.
    pub field: Field,
    /// What is wrong.
    pub problem: FieldProblem,
}

impl FieldError {
    /// The text shown next to the field.
    pub fn message(&self) -> String {
        match self.problem {
            FieldProblem::Required => "required".to_owned(),
            FieldProblem::TooLong => format!("at most {MAX_NAME_CHARS} characters"),
            FieldProblem::Taken => "username taken".to_owned(),
        }
    }
}

/// Why a write was refused. Every variant has a fixed text (at most a number in it), so an
/// error carried in a URL (the no-WASM path) can only ever show one of these.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Problem {
    /// Fields failed validation (400), or the username is taken (409).
    Invalid(Vec<FieldError>),
    /// The user or device does not exist (deleted meanwhile) (404).
    Gone,
    /// The request came from another site or named a foreign `Host` (403).
    CrossSite,
    /// The request's fields could not be read (400).
    BadRequest,
    /// The request body is larger than any form sends (413).
    TooLarge,
    /// This client address wrote faster than `WRITE_RATE_PER_IP` allows (429); it may write
    /// again in `retry_after` seconds (the `Retry-After` header says the same).
    TooFast {
        /// Whole seconds until a write is allowed again, at least 1.
        retry_after: u32,
    },
    /// The server could not be reached (only ever made in the browser).
    Unreachable,
    /// The database failed; details are in the server's log (500).
    Internal,
}

/// A refused write: what was wrong and which document the request named. It is sent as JSON
/// with its [`text`](Self::text) as `message`, for people reading the raw answer; decoding
/// ignores that field, so what a page shows always comes from the problem itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(into = "Answer")]
pub struct EditError {
    /// The `_id` of the user or device the request named (edits, deletes, lock changes), so
    /// that only its row shows the error.
    #[serde(default)]
    pub id: Option<String>,
    /// What was wrong.
    pub problem: Problem,
}

/// [`EditError`] as it is sent.
#[derive(Serialize)]
struct Answer {
    id: Option<String>,
    problem: Problem,
    message: String,
}

impl From<EditError> for Answer {
    fn from(error: EditError) -> Self {
        Self {
            message: error.text(),
            id: error.id,
            problem: error.problem,
        }
    }
}

impl EditError {
    /// A refusal of a request about document `id`.
    pub fn new(id: Option<&str>, problem: Problem) -> Self {
        Self {
            id: id.map(str::to_owned),
            problem,
        }
    }

    /// The HTTP status the refusal is answered with.
    pub fn status(&self) -> u16 {
        match &self.problem {
            Problem::Invalid(fields) if fields.iter().any(|f| f.problem == FieldProblem::Taken) => {
                409
            }
            Problem::Invalid(_) | Problem::BadRequest => 400,
            Problem::Gone => 404,
            Problem::CrossSite => 403,
            Problem::TooLarge => 413,
            Problem::TooFast { .. } => 429,
            Problem::Unreachable | Problem::Internal => 500,
        }
    }

    /// The problems of the fields, if that is what was wrong.
    pub fn fields(&self) -> &[FieldError] {
        match &self.problem {
            Problem::Invalid(fields) => fields,
            _ => &[],
        }
    }

    /// The problem with `field`, if any.
    pub fn field(&self, field: Field) -> Option<FieldError> {
        self.fields().iter().copied().find(|f| f.field == field)
    }

    /// One line saying what happened.
    pub fn text(&self) -> String {
        match &self.problem {
            Problem::Invalid(fields) => {
                let parts: Vec<String> = fields
                    .iter()
                    .map(|f| format!("{}: {}", f.field.name(), f.message()))
                    .collect();
                format!("Not saved: {}.", parts.join("; "))
            }
            Problem::Gone => "Not saved: it was deleted meanwhile.".to_owned(),
            Problem::CrossSite => "Refused: the request did not come from this site.".to_owned(),
            Problem::BadRequest => "Not saved: the form could not be read.".to_owned(),
            Problem::TooLarge => "Not saved: the request is too large.".to_owned(),
            Problem::TooFast { retry_after } => {
                format!("Too many changes; try again in {retry_after} s.")
            }
            Problem::Unreachable => "Not saved: the server could not be reached.".to_owned(),
            Problem::Internal => "Not saved: the server failed; try again.".to_owned(),
        }
    }
}

impl fmt::Display for EditError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text())
    }
}

impl std::error::Error for EditError {}

impl FromServerFnError for EditError {
    type Encoder = JsonEncoding;

    fn from_server_fn_error(value: ServerFnErrorErr) -> Self {
        let problem = match value {
            ServerFnErrorErr::Args(_) | ServerFnErrorErr::MissingArg(_) => Problem::BadRequest,
            ServerFnErrorErr::Request(_) => Problem::Unreachable,
            _ => Problem::Internal,
        };
        Self::new(None, problem)
    }
}

/// A user's fields, trimmed and checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserFields {
    /// First name.
    pub fname: String,
    /// Last name.
    pub lname: String,
    /// User name.
    pub username: String,
}

impl UserFields {
    /// Trims each field and checks it holds 1 to [`MAX_NAME_CHARS`] Unicode scalar values; the
    /// error lists every field that does not.
    pub fn parse(fname: &str, lname: &str, username: &str) -> Result<Self, Problem> {
        let mut problems = Vec::new();
        let mut check = |field: Field, value: &str| {
            let value = value.trim();
            let length = value.chars().count();
            let problem = if length == 0 {
                Some(FieldProblem::Required)
            } else if length > MAX_NAME_CHARS {
                Some(FieldProblem::TooLong)
            } else {
                None
            };
            if let Some(problem) = problem {
                problems.push(FieldError { field, problem });
            }
            value.to_owned()
        };
        let fields = Self {
            fname: check(Field::Fname, fname),
            lname: check(Field::Lname, lname),
            username: check(Field::Username, username),
        };
        if problems.is_empty() {
            Ok(fields)
        } else {
            Err(Problem::Invalid(problems))
        }
    }
}

/// Adds a user; answers its `_id`.
#[server(prefix = "/_server", endpoint = "add_user")]
#[cfg_attr(feature = "ssr", tracing::instrument(skip_all))]
pub async fn add_user(
    #[server(default)] fname: String,
    #[server(default)] lname: String,
    #[server(default)] username: String,
) -> Result<String, EditError> {
    let fields =
        UserFields::parse(&fname, &lname, &username).map_err(|p| EditError::new(None, p))?;
    ssr::add_user(&fields).await
}

/// Replaces the names of user `id`.
#[server(prefix = "/_server", endpoint = "edit_user")]
#[cfg_attr(feature = "ssr", tracing::instrument(skip_all))]
pub async fn edit_user(
    #[server(default)] id: String,
    #[server(default)] fname: String,
    #[server(default)] lname: String,
    #[server(default)] username: String,
) -> Result<(), EditError> {
    let fields =
        UserFields::parse(&fname, &lname, &username).map_err(|p| EditError::new(Some(&id), p))?;
    ssr::edit_user(&id, &fields).await
}

/// Deletes user `id`.
#[server(prefix = "/_server", endpoint = "delete_user")]
#[cfg_attr(feature = "ssr", tracing::instrument(skip_all))]
pub async fn delete_user(#[server(default)] id: String) -> Result<(), EditError> {
    ssr::delete_user(&id).await
}

/// Locks (`locked=true`) or unlocks (`locked=false`) lock device `id`.
#[server(prefix = "/_server", endpoint = "set_lock")]
#[cfg_attr(feature = "ssr", tracing::instrument(skip_all))]
pub async fn set_lock(
    #[server(default)] id: String,
    #[server(default)] locked: String,
) -> Result<(), EditError> {
    let locked = match locked.as_str() {
        "true" => true,
        "false" => false,
        _ => return Err(EditError::new(Some(&id), Problem::BadRequest)),
    };
    ssr::set_lock(&id, locked).await
}

/// The writes behind the server functions. Every filter and update is built from typed values
/// (an `ObjectId`, strings, a bool): nothing a client sends is read as a query operator.
#[cfg(feature = "ssr")]
pub mod ssr {
    use leptos::prelude::*;
    use mongodb::bson::oid::ObjectId;
    use mongodb::bson::{doc, Document};
    use mongodb::error::{ErrorKind, WriteFailure};
    use mongodb::{Collection, Database};

    use super::{EditError, FieldError, FieldProblem, Problem, UserFields};
    use crate::model::{DEVICES, USERS};
    use crate::repo::Repo;

    /// Whether `err` is a duplicate-key error (11000), as a command or a write reports it.
    pub fn is_duplicate_key(err: &mongodb::error::Error) -> bool {
        match err.kind.as_ref() {
            ErrorKind::Command(c) => c.code == 11000,
            ErrorKind::Write(WriteFailure::WriteError(w)) => w.code == 11000,
            _ => false,
        }
    }

    fn database() -> Result<Database, EditError> {
        use_context::<Repo>()
            .map(|repo| repo.database().clone())
            .ok_or_else(|| {
                tracing::error!("Repo missing from context");
                EditError::new(None, Problem::Internal)
            })
    }

    fn collection(name: &str) -> Result<Collection<Document>, EditError> {
        Ok(database()?.collection(name))
    }

    /// `id` as an `ObjectId`; one that cannot parse names no document (404).
    fn object_id(id: &str) -> Result<ObjectId, EditError> {
        ObjectId::parse_str(id).map_err(|_| EditError::new(Some(id), Problem::Gone))
    }

    fn taken(id: Option<&str>) -> EditError {
        EditError::new(
            id,
            Problem::Invalid(vec![FieldError {
                field: super::Field::Username,
                problem: FieldProblem::Taken,
            }]),
        )
    }

    /// A failed write: a duplicate key means the username is taken (a concurrent write won);
    /// anything else is logged and answered as an internal error.
    fn failed(id: Option<&str>, err: &mongodb::error::Error) -> EditError {
        if is_duplicate_key(err) {
            return taken(id);
        }
        tracing::error!(cause = %err, "database write failed");
        EditError::new(id, Problem::Internal)
    }

    /// Refuses a username another user (not `except`) has. The unique index refuses it too;
    /// this check also holds while existing duplicates keep the index from being built.
    async fn ensure_free(
        users: &Collection<Document>,
        username: &str,
        except: Option<ObjectId>,
        id: Option<&str>,
    ) -> Result<(), EditError> {
        let filter = match except {
            Some(except) => doc! { "username": username, "_id": { "$ne": except } },
            None => doc! { "username": username },
        };
        match users.find_one(filter).projection(doc! { "_id": 1 }).await {
            Ok(None) => Ok(()),
            Ok(Some(_)) => Err(taken(id)),
            Err(e) => Err(failed(id, &e)),
        }
    }

    /// Inserts a user; answers its `_id` as hex.
    pub async fn add_user(fields: &UserFields) -> Result<String, EditError> {
        let users = collection(USERS)?;
        ensure_free(&users, &fields.username, None, None).await?;
        let id = ObjectId::new();
        let user = doc! {
            "_id": id,
            "fname": &fields.fname,
            "lname": &fields.lname,
            "username": &fields.username,
        };
        users.insert_one(user).await.map_err(|e| failed(None, &e))?;
        tracing::info!(%id, "user added");
        Ok(id.to_hex())
    }

    /// Replaces the names of user `id`.
    pub async fn edit_user(id: &str, fields: &UserFields) -> Result<(), EditError> {
        let oid = object_id(id)?;
        let users = collection(USERS)?;
        ensure_free(&users, &fields.username, Some(oid), Some(id)).await?;
        let update = doc! { "$set": {
            "fname": &fields.fname,
            "lname": &fields.lname,
            "username": &fields.username,
        } };
        let result = users
            .update_one(doc! { "_id": oid }, update)
            .await
            .map_err(|e| failed(Some(id), &e))?;
        if result.matched_count == 0 {
            return Err(EditError::new(Some(id), Problem::Gone));
        }
        tracing::info!(%id, "user edited");
        Ok(())
    }

    /// Deletes user `id`.
    pub async fn delete_user(id: &str) -> Result<(), EditError> {
        let oid = object_id(id)?;
        let result = collection(USERS)?
            .delete_one(doc! { "_id": oid })
            .await
            .map_err(|e| failed(Some(id), &e))?;
        if result.deleted_count == 0 {
            return Err(EditError::new(Some(id), Problem::Gone));
        }
        tracing::info!(%id, "user deleted");
        Ok(())
    }

    /// Sets `locked` on lock device `id`.
    pub async fn set_lock(id: &str, locked: bool) -> Result<(), EditError> {
        let oid = object_id(id)?;
        let result = collection(DEVICES)?
            .update_one(
                doc! { "_id": oid, "type": "lock" },
                doc! { "$set": { "locked": locked } },
            )
            .await
            .map_err(|e| failed(Some(id), &e))?;
        if result.matched_count == 0 {
            return Err(EditError::new(Some(id), Problem::Gone));
        }
        tracing::info!(%id, locked, "lock changed");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problems(result: Result<UserFields, Problem>) -> Vec<(Field, FieldProblem)> {
        match result {
            Err(Problem::Invalid(fields)) => fields.iter().map(|f| (f.field, f.problem)).collect(),
            other => panic!("expected invalid fields, got {other:?}"),
        }
    }

    #[test]
    fn fields_are_trimmed_and_kept_literally() {
        let fields =
            UserFields::parse("  Ada ", "\tLovelace\n", r#" {"$gt": ""} "#).expect("valid");
        assert_eq!(fields.fname, "Ada");
        assert_eq!(fields.lname, "Lovelace");
        assert_eq!(fields.username, r#"{"$gt": ""}"#);
    }

    #[test]
    fn each_field_needs_one_to_sixty_four_scalar_values() {
        let at_limit = "é".repeat(MAX_NAME_CHARS);
        assert!(UserFields::parse(&at_limit, "$where", "a.b").is_ok());
        let over = "é".repeat(MAX_NAME_CHARS + 1);
        assert_eq!(
            problems(UserFields::parse("  ", &over, "")),
            vec![
                (Field::Fname, FieldProblem::Required),
                (Field::Lname, FieldProblem::TooLong),
                (Field::Username, FieldProblem::Required),
            ]
        );
    }

    #[test]
    fn statuses_follow_the_problem() {
        let invalid = UserFields::parse("", "x", "y").expect_err("invalid");
        assert_eq!(EditError::new(None, invalid).status(), 400);
        let taken = Problem::Invalid(vec![FieldError {
            field: Field::Username,
            problem: FieldProblem::Taken,
        }]);
        let taken = EditError::new(None, taken);
        assert_eq!(taken.status(), 409);
        assert_eq!(
            taken.field(Field::Username).map(|f| f.message()).as_deref(),
            Some("username taken")
        );
        assert_eq!(EditError::new(Some("ab"), Problem::Gone).status(), 404);
        assert_eq!(EditError::new(None, Problem::CrossSite).status(), 403);
        assert_eq!(EditError::new(None, Problem::TooLarge).status(), 413);
        let too_fast = EditError::new(None, Problem::TooFast { retry_after: 3 });
        assert_eq!(too_fast.status(), 429);
        assert_eq!(too_fast.text(), "Too many changes; try again in 3 s.");
        assert_eq!(EditError::de(too_fast.ser()), too_fast);
        assert_eq!(
            EditError::from_server_fn_error(ServerFnErrorErr::Args("x".into())).status(),
            400
        );
    }

    #[test]
    fn errors_round_trip_and_ignore_a_sent_message() {
        let error = EditError::new(Some("ab"), Problem::Gone);
        let bytes = error.ser();
        let text = String::from_utf8_lossy(&bytes).into_owned();
        assert!(text.contains("deleted meanwhile"), "{text}");
        assert_eq!(EditError::de(bytes), error);
        let forged = br#"{"id":null,"problem":"gone","message":"<b>call us</b>"}"#;
        let decoded = EditError::de(forged.to_vec().into());
        assert_eq!(decoded, EditError::new(None, Problem::Gone));
        assert_eq!(decoded.text(), "Not saved: it was deleted meanwhile.");
    }
}
