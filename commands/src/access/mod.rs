//! The access write side (issue 17): custom roles and who holds which role
//! (`domain::access`). Every decision reads the store (decided 14): the
//! actor's effective permissions are folded from their `Grants` stream and
//! the streams of the custom roles they hold, on every call.
//!
//! Rules (Mastodon's role model): nobody grants a permission they do not
//! hold, whether by defining or changing a role or by granting one; nobody
//! changes their own roles; built-in roles cannot be changed or deleted; a
//! role still held cannot be deleted.

use std::collections::{BTreeMap, BTreeSet};

use chrono::Utc;
use domain::access::grants::{Grants, GrantsCommand, GrantsError};
use domain::access::role::{Actor, Role, RoleCommand, RoleError};
use domain::access::{builtin_permissions, validate_role_name, Permission};
use domain::consistency::ConsistencyToken;
use sqlx::PgPool;
use uuid::Uuid;

use crate::executor::{
    append_together, retry_delay, DecidedRows, ExecError, Executor, Together, MAX_ATTEMPTS,
};
use crate::identity::RequestMeta;

/// Why an access command was refused.
#[derive(Debug, thiserror::Error)]
pub enum AccessError {
    /// 422 `validation_failed` naming the field.
    #[error("{field} {message}")]
    Invalid { field: &'static str, message: String },
    /// 409 `role_exists`.
    #[error("a role of that name exists")]
    RoleExists,
    /// 404 `role_not_found`.
    #[error("no such role")]
    RoleNotFound,
    /// 404 `user_not_found`.
    #[error("no such user")]
    UserNotFound,
    /// 403 `builtin_role` — built-in roles cannot be changed or deleted.
    #[error("built-in roles cannot be changed or deleted")]
    Builtin,
    /// 409 `role_in_use` — still held by `holders` users.
    #[error("the role is held by {holders} users")]
    InUse { holders: i64 },
    /// 403 `permission_not_held` — granting what the actor does not hold.
    #[error("you cannot grant {0}: you do not hold it")]
    NotHeld(&'static str),
    /// 403 `own_roles` — changing one's own roles.
    #[error("you cannot change your own roles")]
    OwnRoles,
    /// 409 `conflict`.
    #[error("changed concurrently; retry")]
    Conflict,
    /// 500.
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<ExecError<RoleError>> for AccessError {
    fn from(e: ExecError<RoleError>) -> Self {
        match e {
            ExecError::Domain(RoleError::Exists) => Self::RoleExists,
            ExecError::Domain(RoleError::NotFound) => Self::RoleNotFound,
            ExecError::Domain(RoleError::InUse { holders }) => {
                Self::InUse { holders: i64::try_from(holders).unwrap_or(i64::MAX) }
            }
            ExecError::Conflict => Self::Conflict,
            ExecError::Store(e) => Self::Internal(e),
        }
    }
}

impl From<ExecError<GrantsError>> for AccessError {
    fn from(e: ExecError<GrantsError>) -> Self {
        match e {
            ExecError::Domain(e) => match e {},
            ExecError::Conflict => Self::Conflict,
            ExecError::Store(e) => Self::Internal(e),
        }
    }
}

impl From<sqlx::Error> for AccessError {
    fn from(e: sqlx::Error) -> Self {
        Self::Internal(e.to_string())
    }
}

/// A user's roles (always including `user`) and the permissions they give.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Effective {
    pub roles: Vec<String>,
    pub permissions: BTreeSet<Permission>,
}

impl Effective {
    pub fn has(&self, p: Permission) -> bool {
        self.permissions.contains(&p)
    }

    fn actor(&self, user: Uuid) -> Actor {
        Actor { user_id: Some(user), roles: self.roles.clone() }
    }

    fn require_all(&self, permissions: &[Permission]) -> Result<(), AccessError> {
        match permissions.iter().find(|p| !self.has(**p)) {
            Some(p) => Err(AccessError::NotHeld(p.as_str())),
            None => Ok(()),
        }
    }
}

/// A role as listed: built-in or custom.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoleView {
    pub name: String,
    pub description: String,
    pub permissions: Vec<Permission>,
    pub builtin: bool,
}

/// What a command did.
#[derive(Debug, Clone)]
pub struct Done {
    pub changed: bool,
    pub token: Option<ConsistencyToken>,
}

/// The access write side.
pub struct AccessService {
    pool: PgPool,
    roles: Executor<Role>,
    grants: Executor<Grants>,
}

impl AccessService {
    /// A service over the event store of `pool`.
    pub fn new(pool: PgPool) -> Self {
        Self { roles: Executor::new(pool.clone(), ()), grants: Executor::new(pool.clone(), ()), pool }
    }

    /// `user`'s effective roles and permissions, from the store.
    ///
    /// # Errors
    /// `Internal` on a store failure.
    pub async fn effective(&self, user: Uuid) -> Result<Effective, AccessError> {
        let grants = self.grants.load(&user.to_string()).await?;
        let mut out = Effective { roles: vec!["user".to_owned()], permissions: BTreeSet::new() };
        let custom: Vec<&str> =
            grants.roles.iter().filter(|r| builtin_permissions(r).is_none()).map(String::as_str).collect();
        let loaded = if custom.is_empty() { Vec::new() } else { self.roles.load_many(&custom).await? };
        let custom: BTreeMap<String, Role> = loaded
            .into_iter()
            .map(|l| l.state().clone())
            .filter(|r| r.live)
            .filter_map(|r| r.name.clone().map(|n| (n, r)))
            .collect();
        for role in &grants.roles {
            let permissions = match builtin_permissions(role) {
                Some(p) => p,
                None => match custom.get(role) {
                    Some(r) => r.permissions.clone(),
                    None => continue, // deleted since: confers nothing
                },
            };
            out.roles.push(role.clone());
            out.permissions.extend(permissions);
        }
        out.roles.sort_unstable();
        out.roles.dedup();
        Ok(out)
    }

    /// Role `name` (built-in or live custom), or `None`.
    ///
    /// # Errors
    /// `Internal`.
    pub async fn role(&self, name: &str) -> Result<Option<RoleView>, AccessError> {
        if let Some(permissions) = builtin_permissions(name) {
            return Ok(Some(RoleView {
                name: name.to_owned(),
                description: builtin_description(name).to_owned(),
                permissions,
                builtin: true,
            }));
        }
        if validate_role_name(name).is_err() {
            return Ok(None);
        }
        let role = self.roles.load(name).await?;
        Ok(role.live.then(|| RoleView {
            name: name.to_owned(),
            description: role.description,
            permissions: role.permissions,
            builtin: false,
        }))
    }

    /// `actor` defines role `name`.
    ///
    /// # Errors
    /// `Invalid` (name, description ≤ 500 characters), `RoleExists`
    /// (also for built-in names), `NotHeld`, `Conflict`, `Internal`.
    pub async fn define_role(
        &self,
        actor: Uuid,
        name: &str,
        description: &str,
        permissions: &[Permission],
        meta: &RequestMeta,
    ) -> Result<Done, AccessError> {
        validate_role_name(name)
            .map_err(|m| AccessError::Invalid { field: "name", message: m.to_owned() })?;
        validate_description(description)?;
        if builtin_permissions(name).is_some() {
            return Err(AccessError::RoleExists);
        }
        let who = self.effective(actor).await?;
        who.require_all(permissions)?;
        let cmd = RoleCommand::Define {
            name: name.to_owned(),
            description: description.to_owned(),
            permissions: permissions.to_vec(),
            actor: who.actor(actor),
            at: Utc::now(),
        };
        let done = self.roles.execute(name, cmd, metadata(meta, "DefineRole", actor)).await?;
        Ok(Done { changed: !done.events.is_empty(), token: done.token })
    }

    /// `actor` changes role `name`: they must hold every permission it has
    /// and every one it gets.
    ///
    /// # Errors
    /// `Builtin`, `RoleNotFound`, `Invalid`, `NotHeld`, `Conflict`, `Internal`.
    pub async fn update_role(
        &self,
        actor: Uuid,
        name: &str,
        description: Option<&str>,
        permissions: Option<&[Permission]>,
        meta: &RequestMeta,
    ) -> Result<Done, AccessError> {
        if builtin_permissions(name).is_some() {
            return Err(AccessError::Builtin);
        }
        if let Some(d) = description {
            validate_description(d)?;
        }
        let current = self.role(name).await?.ok_or(AccessError::RoleNotFound)?;
        let who = self.effective(actor).await?;
        who.require_all(&current.permissions)?;
        if let Some(p) = permissions {
            who.require_all(p)?;
        }
        let cmd = RoleCommand::Update {
            description: description.map(str::to_owned),
            permissions: permissions.map(<[Permission]>::to_vec),
            actor: who.actor(actor),
            at: Utc::now(),
        };
        let done = self.roles.execute(name, cmd, metadata(meta, "UpdateRole", actor)).await?;
        Ok(Done { changed: !done.events.is_empty(), token: done.token })
    }

    /// `actor` deletes role `name`. The role's own stream counts its
    /// holders (every grant and revocation of a custom role is appended
    /// together with a `RoleHolderAdded` / `RoleHolderRemoved` on it), so
    /// the refusal of a held role is decided on the write side (decided
    /// 14) and a grant racing the deletion conflicts with it: one of the
    /// two is decided again.
    ///
    /// # Errors
    /// `Builtin`, `RoleNotFound`, `InUse` (with the count), `NotHeld`,
    /// `Conflict`, `Internal`.
    ///
    /// Grants written before roles counted their holders (and a grant of
    /// an earlier role of the same name) are not on the role's stream: the
    /// users whose `access` streams hold the role are counted in the store
    /// as well, and any refuses the deletion.
    pub async fn delete_role(
        &self,
        actor: Uuid,
        name: &str,
        meta: &RequestMeta,
    ) -> Result<Done, AccessError> {
        if builtin_permissions(name).is_some() {
            return Err(AccessError::Builtin);
        }
        let current = self.role(name).await?.ok_or(AccessError::RoleNotFound)?;
        let holders = self.holders_in_store(name).await?;
        if holders > 0 {
            return Err(AccessError::InUse { holders });
        }
        let who = self.effective(actor).await?;
        who.require_all(&current.permissions)?;
        let cmd = RoleCommand::Delete { actor: who.actor(actor), at: Utc::now() };
        let done = self.roles.execute(name, cmd, metadata(meta, "DeleteRole", actor)).await?;
        Ok(Done { changed: !done.events.is_empty(), token: done.token })
    }

    /// The users whose grants (their `access` streams in the store, the
    /// write side) hold `role`: each one's last `RoleGranted` or
    /// `RoleRevoked` of it is a grant.
    ///
    /// # Errors
    /// `Internal`.
    async fn holders_in_store(&self, role: &str) -> Result<i64, AccessError> {
        Ok(sqlx::query_scalar(
            "SELECT count(*) FROM (
                 SELECT DISTINCT ON (aggregate_id) event_type FROM events
                 WHERE aggregate_type = 'access' AND event_type IN ('RoleGranted', 'RoleRevoked')
                   AND payload -> event_type ->> 'role' = $1
                 ORDER BY aggregate_id, sequence DESC
             ) last WHERE event_type = 'RoleGranted'",
        )
        .bind(role)
        .fetch_one(&self.pool)
        .await?)
    }

    /// `actor` grants (`grant: true`) or revokes `role` to `user`. `actor:
    /// None` is the operator's CLI (`streamforge admin grant`), which
    /// bypasses the actor's checks.
    ///
    /// # Errors
    /// `OwnRoles`, `RoleNotFound` (also `user`, which everyone holds),
    /// `UserNotFound`, `NotHeld`, `Conflict`, `Internal`.
    pub async fn set_role(
        &self,
        actor: Option<Uuid>,
        user: Uuid,
        role: &str,
        grant: bool,
        meta: &RequestMeta,
    ) -> Result<Done, AccessError> {
        if actor == Some(user) {
            return Err(AccessError::OwnRoles);
        }
        let view = self.role(role).await?.filter(|r| r.name != "user");
        let view = match (view, grant) {
            (Some(v), _) => v,
            // Revoking a role deleted since is allowed (it confers nothing).
            (None, false) if builtin_permissions(role).is_none() && validate_role_name(role).is_ok() => {
                RoleView {
                    name: role.to_owned(),
                    description: String::new(),
                    permissions: vec![],
                    builtin: false,
                }
            }
            (None, _) => return Err(AccessError::RoleNotFound),
        };
        if grant && !crate::identity::account_exists(&self.pool, user).await? {
            return Err(AccessError::UserNotFound);
        }
        let who = match actor {
            Some(a) => {
                let who = self.effective(a).await?;
                who.require_all(&view.permissions)?;
                who.actor(a)
            }
            None => Actor { user_id: None, roles: vec!["operator".to_owned()] },
        };
        let at = Utc::now();
        let (cmd, name) = if grant {
            (GrantsCommand::Grant { user_id: user, role: view.name, actor: who, at }, "GrantRole")
        } else {
            (GrantsCommand::Revoke { user_id: user, role: view.name, actor: who, at }, "RevokeRole")
        };
        let mut metadata = meta.to_map(name);
        if let Some(a) = actor {
            metadata.insert("actor".to_owned(), a.to_string());
        }
        if builtin_permissions(role).is_some() {
            // Built-in roles are never deleted: nothing counts their holders.
            let done = self.grants.execute(&user.to_string(), cmd, metadata).await?;
            return Ok(Done { changed: !done.events.is_empty(), token: done.token });
        }
        self.set_custom_role(user, role, grant, cmd, metadata, at).await
    }

    /// [`AccessService::set_role`] of a custom role: the user's grant (or
    /// revocation) and the role's `RoleHolderAdded` (`RoleHolderRemoved`)
    /// in one statement ([`append_together`]), decided again from fresh
    /// reads when either stream moved meanwhile. A role deleted since the
    /// check above refuses the grant (`RoleNotFound`).
    async fn set_custom_role(
        &self,
        user: Uuid,
        role: &str,
        grant: bool,
        cmd: GrantsCommand,
        metadata: std::collections::HashMap<String, String>,
        at: chrono::DateTime<Utc>,
    ) -> Result<Done, AccessError> {
        let user_key = user.to_string();
        let mut attempt = 0;
        loop {
            attempt += 1;
            let loaded = self.grants.load_many(&[&user_key]).await?.pop();
            let role_loaded = self.roles.load_many(&[role]).await?.pop();
            let (Some(loaded), Some(role_loaded)) = (loaded, role_loaded) else {
                return Err(AccessError::Internal("streams not loaded".to_owned()));
            };
            let decided = self.grants.decide(loaded, cmd.clone(), metadata.clone()).await?;
            if decided.events.is_empty() {
                return Ok(Done { changed: false, token: None });
            }
            let holder = if grant {
                RoleCommand::AddHolder { user_id: user, at }
            } else {
                RoleCommand::RemoveHolder { user_id: user, at }
            };
            let counted = self.roles.decide(role_loaded, holder, metadata.clone()).await?;
            let parts: [&dyn DecidedRows; 2] = [&decided, &counted];
            match append_together(&self.pool, &parts, None).await {
                Ok(position) => {
                    let sequence = decided.sequence() + decided.events.len();
                    let token = ConsistencyToken {
                        position,
                        aggregate_type: <Grants as cqrs_es::Aggregate>::TYPE.to_owned(),
                        aggregate_id: user_key,
                        sequence: i64::try_from(sequence).unwrap_or(i64::MAX),
                    };
                    return Ok(Done { changed: true, token: Some(token) });
                }
                Err(Together::Conflict) if attempt < MAX_ATTEMPTS => {
                    tokio::time::sleep(retry_delay(attempt)).await;
                }
                Err(Together::Conflict) => return Err(AccessError::Conflict),
                Err(Together::Store(e)) => return Err(AccessError::Internal(e)),
            }
        }
    }

    /// Records that `user` was refused `permission` on `method path`.
    ///
    /// # Errors
    /// `Conflict`, `Internal`.
    pub async fn record_denied(
        &self,
        user: Uuid,
        permission: Permission,
        method: &str,
        path: &str,
        meta: &RequestMeta,
    ) -> Result<(), AccessError> {
        let cmd = GrantsCommand::RecordDenied {
            user_id: user,
            permission,
            method: method.to_owned(),
            path: path.to_owned(),
            at: Utc::now(),
        };
        self.grants.execute(&user.to_string(), cmd, metadata(meta, "PermissionDenied", user)).await?;
        Ok(())
    }

    /// Records that admin `reader` read personal fields of `subjects`
    /// (issue 18). Nothing is written when `subjects` is empty.
    ///
    /// # Errors
    /// `Conflict`, `Internal`.
    pub async fn record_history_read(
        &self,
        reader: Uuid,
        subjects: Vec<Uuid>,
        what: &str,
        meta: &RequestMeta,
    ) -> Result<(), AccessError> {
        if subjects.is_empty() {
            return Ok(());
        }
        let cmd = GrantsCommand::RecordHistoryRead {
            user_id: reader,
            subjects,
            what: what.to_owned(),
            at: Utc::now(),
        };
        self.grants.execute(&reader.to_string(), cmd, metadata(meta, "ReadHistory", reader)).await?;
        Ok(())
    }
}

/// The roles `user` holds besides `user`, as the store has them (for the
/// access token's `roles` claim; a deleted custom role may still be named
/// until the next token: it confers nothing).
///
/// # Errors
/// A store failure, as text.
pub async fn roles_of(pool: &PgPool, user: Uuid) -> Result<Vec<String>, String> {
    Executor::<Grants>::new(pool.clone(), ())
        .load(&user.to_string())
        .await
        .map(|g| g.roles)
        .map_err(|e| e.to_string())
}

fn metadata(meta: &RequestMeta, command: &str, actor: Uuid) -> std::collections::HashMap<String, String> {
    let mut m = meta.to_map(command);
    m.insert("actor".to_owned(), actor.to_string());
    m
}

fn validate_description(d: &str) -> Result<(), AccessError> {
    if d.chars().count() > 500 || d.chars().any(|c| c.is_control() && c != '\n') {
        return Err(AccessError::Invalid {
            field: "description",
            message: "must be at most 500 characters, without control characters".to_owned(),
        });
    }
    Ok(())
}

/// The description of a built-in role.
pub fn builtin_description(name: &str) -> &'static str {
    match name {
        "admin" => "every permission",
        "moderator" => "the moderation permissions",
        _ => "every account; no permission",
    }
}
