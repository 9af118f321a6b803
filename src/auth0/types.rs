//! Wire types of the Management API, tolerant where AUTH0.md says Auth0 is loose.

use serde::{Deserialize, Serialize};
use serde_json::Value;

#[derive(Deserialize)]
pub struct TokenResponse {
    pub access_token: String,
    pub expires_in: u64,
}

/// `GET /api/v2/jobs/{id}` and the create response; unknown keys are ignored.
#[derive(Clone, Debug, Deserialize)]
pub struct ExportJob {
    pub id: String,
    pub status: String,
    /// May be present but empty while pending.
    #[serde(default)]
    pub location: Option<String>,
    #[serde(default)]
    pub percentage_done: Option<f64>,
    #[serde(default)]
    pub time_left_seconds: Option<f64>,
}

impl ExportJob {
    pub fn download_url(&self) -> Option<&str> {
        self.location.as_deref().filter(|l| !l.is_empty())
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Role {
    pub id: String,
    pub name: String,
    #[serde(default)]
    pub description: Option<String>,
}

/// Offset-paged lists come back bare, or wrapped when `include_totals=true`.
#[derive(Deserialize)]
#[serde(untagged)]
pub enum RolesPage {
    Wrapped {
        roles: Vec<Role>,
        #[serde(default)]
        total: Option<u64>,
    },
    Bare(Vec<Role>),
}

/// A page of an offset-paged listing: its items and, when Auth0 sent it, the total.
pub trait OffsetPage: serde::de::DeserializeOwned {
    type Item;
    fn into_parts(self) -> (Vec<Self::Item>, Option<u64>);
}

impl OffsetPage for RolesPage {
    type Item = Role;
    fn into_parts(self) -> (Vec<Role>, Option<u64>) {
        match self {
            RolesPage::Wrapped { roles, total } => (roles, total),
            RolesPage::Bare(roles) => (roles, None),
        }
    }
}

/// Checkpoint page of `GET /roles/{id}/users`: a missing `next` means the end.
#[derive(Deserialize)]
pub struct RoleMembersPage {
    pub users: Vec<RoleMember>,
    #[serde(default)]
    pub next: Option<String>,
}

#[derive(Deserialize)]
pub struct RoleMember {
    pub user_id: String,
}

/// `/users/{id}/authentication-methods`: bare, or wrapped under `authenticators` with `total`
/// omitted when empty.
#[derive(Deserialize)]
#[serde(untagged)]
pub enum MethodsPage {
    Wrapped {
        authenticators: Vec<Value>,
        #[serde(default)]
        total: Option<u64>,
    },
    Bare(Vec<Value>),
}

impl OffsetPage for MethodsPage {
    type Item = Value;
    fn into_parts(self) -> (Vec<Value>, Option<u64>) {
        match self {
            MethodsPage::Wrapped { authenticators, total } => (authenticators, total),
            MethodsPage::Bare(items) => (items, None),
        }
    }
}

/// Management API (`statusCode/error/message/errorCode`) and OAuth (`error/error_description`) bodies.
#[derive(Debug, Default, Deserialize)]
pub struct ErrorBody {
    #[serde(default, rename = "statusCode")]
    pub status_code: Option<u16>,
    #[serde(default)]
    pub error: Option<String>,
    #[serde(default)]
    pub message: Option<String>,
    #[serde(default, rename = "errorCode")]
    pub error_code: Option<String>,
    #[serde(default)]
    pub error_description: Option<String>,
}

impl ErrorBody {
    pub fn parse(body: &str) -> ErrorBody {
        serde_json::from_str(body).unwrap_or_default()
    }

    /// A sentence for people: the message, else the description, else the code. A missing scope
    /// says what to grant, since that is the one fix.
    pub fn summary(&self) -> String {
        if self.error_code.as_deref() == Some("insufficient_scope") {
            return format!(
                "{} (errorCode insufficient_scope: grant the missing scope to this application in the Auth0 dashboard, APIs > Auth0 Management API > Machine to Machine Applications)",
                self.message.as_deref().unwrap_or("Insufficient scope")
            );
        }
        self.message
            .clone()
            .or_else(|| self.error_description.clone())
            .or_else(|| self.error.clone())
            .unwrap_or_else(|| "no error body".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn methods_page_reads_both_shapes_and_missing_total() {
        let wrapped: MethodsPage = serde_json::from_str(r#"{"authenticators":[],"start":0,"limit":50}"#).unwrap();
        assert_eq!(wrapped.into_parts(), (vec![], None));
        let bare: MethodsPage = serde_json::from_str(r#"[{"id":"totp|dev_1","type":"totp"}]"#).unwrap();
        assert_eq!(bare.into_parts().0.len(), 1);
    }

    #[test]
    fn empty_location_is_no_url() {
        let job: ExportJob =
            serde_json::from_str(r#"{"id":"job_1","status":"pending","location":"","percentage_done":0}"#).unwrap();
        assert_eq!(job.download_url(), None);
    }

    #[test]
    fn error_body_prefers_message_then_description() {
        assert_eq!(
            ErrorBody::parse(r#"{"statusCode":404,"message":"The user does not exist."}"#).summary(),
            "The user does not exist."
        );
        assert_eq!(
            ErrorBody::parse(r#"{"error":"access_denied","error_description":"Unauthorized"}"#).summary(),
            "Unauthorized"
        );
        assert_eq!(ErrorBody::parse("<html>").summary(), "no error body");
        let scope = ErrorBody::parse(
            r#"{"statusCode":403,"error":"Forbidden","message":"Insufficient scope, expected any of: read:role_members","errorCode":"insufficient_scope"}"#,
        )
        .summary();
        assert!(
            scope.starts_with(
                "Insufficient scope, expected any of: read:role_members (errorCode insufficient_scope: grant"
            ),
            "{scope}"
        );
    }
}
