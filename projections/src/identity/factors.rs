//! Quick factors a returning client may use (seed 003), read from the
//! passkey and device-PIN read models (`rm_passkeys`, `rm_device_pins`).

use sqlx::PgPool;
use uuid::Uuid;

/// `passkey` when the account has a passkey, `pin` when device `device_id`
/// has an enabled PIN; in that order.
///
/// # Errors
/// Database errors.
pub async fn quick_factors(
    pool: &PgPool,
    user_id: Uuid,
    device_id: &str,
) -> Result<Vec<String>, sqlx::Error> {
    let (passkey, pin): (bool, bool) = sqlx::query_as(
        "SELECT EXISTS (SELECT 1 FROM rm_passkeys WHERE user_id = $1),
                EXISTS (SELECT 1 FROM rm_device_pins WHERE user_id = $1 AND device_id = $2 AND status = 'enabled')",
    )
    .bind(user_id)
    .bind(device_id)
    .fetch_one(pool)
    .await?;
    let mut out = Vec::new();
    if passkey {
        out.push("passkey".to_owned());
    }
    if pin {
        out.push("pin".to_owned());
    }
    Ok(out)
}
