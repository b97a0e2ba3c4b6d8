//! The device-PIN read model (`rm_device_pins`): one row per device that
//! has a PIN, `enabled` or `disabled` (after too many wrong PINs), built
//! from `device_pin` events. Read by [`crate::factors::quick_factors`] for
//! `GET /api/auth/check-session`. No hash or PIN is projected.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use domain::envelope::Envelope;
use domain::pin::{DevicePin, PinEvent};
use sqlx::PgConnection;
use uuid::Uuid;

use crate::runtime::{ProjectionError, Projector};

/// Projects `device_pin` events into `rm_device_pins`.
pub struct PinsProjector;

/// `(user_id, device_id)` from a `<user_id>:<device_id>` aggregate id.
fn user_and_device(env: &Envelope) -> Result<(Uuid, &str), ProjectionError> {
    env.aggregate_id
        .split_once(':')
        .and_then(|(user, device)| Uuid::parse_str(user).ok().map(|u| (u, device)))
        .ok_or_else(|| ProjectionError::Other(anyhow::anyhow!("device_pin id is not <user_id>:<device_id>")))
}

async fn set_status(
    conn: &mut PgConnection,
    env: &Envelope,
    status: &str,
    at: DateTime<Utc>,
) -> Result<(), ProjectionError> {
    let (user_id, device_id) = user_and_device(env)?;
    sqlx::query(
        "INSERT INTO rm_device_pins (user_id, device_id, status, updated_at) VALUES ($1, $2, $3, $4)
         ON CONFLICT (user_id, device_id) DO UPDATE SET status = EXCLUDED.status, updated_at = EXCLUDED.updated_at",
    )
    .bind(user_id)
    .bind(device_id)
    .bind(status)
    .bind(at)
    .execute(conn)
    .await?;
    Ok(())
}

#[async_trait]
impl Projector for PinsProjector {
    fn name(&self) -> &'static str {
        "device_pins"
    }

    fn handles(&self, aggregate_type: &str) -> bool {
        aggregate_type == <DevicePin as cqrs_es::Aggregate>::TYPE
    }

    async fn apply(&self, conn: &mut PgConnection, env: &Envelope) -> Result<(), ProjectionError> {
        let event: PinEvent = env.decode().map_err(|e| ProjectionError::decode(env, e))?;
        match event {
            PinEvent::PinSet { set_at, .. } => set_status(conn, env, "enabled", set_at).await?,
            PinEvent::PinDisabled { disabled_at } => set_status(conn, env, "disabled", disabled_at).await?,
            PinEvent::PinRemoved { .. } => {
                let (user_id, device_id) = user_and_device(env)?;
                sqlx::query("DELETE FROM rm_device_pins WHERE user_id = $1 AND device_id = $2")
                    .bind(user_id)
                    .bind(device_id)
                    .execute(conn)
                    .await?;
            }
            PinEvent::PinVerified { .. }
            | PinEvent::PinVerificationFailed { .. }
            | PinEvent::PinVerificationRefused { .. } => {}
        }
        Ok(())
    }

    fn tables(&self) -> &'static [&'static str] {
        &["rm_device_pins"]
    }
}
