//! What a delivery says: the subject and body of each mail template, and
//! the text of each SMS.

use commands::deliveries::Delivery;

/// Subject and plain-text body of a mail delivery.
pub fn render(d: &Delivery) -> (String, String) {
    let code = d.code.as_deref().unwrap_or("");
    let expiry =
        d.expires_at.map(|e| format!(" It expires at {} UTC.", e.format("%H:%M"))).unwrap_or_default();
    match d.template.as_str() {
        "otp_email_verification" => (
            "Verify your streamforge email".to_owned(),
            format!(
                "Your streamforge verification code is {code}.{expiry}\n\nIf you did not create an account, ignore this mail.\n"
            ),
        ),
        "otp_two_factor" => (
            "Your streamforge sign-in code".to_owned(),
            format!(
                "Your streamforge sign-in code is {code}.{expiry}\n\nIf you did not try to sign in, change your password.\n"
            ),
        ),
        "otp_login" => ("Your streamforge sign-in code".to_owned(), format!("Your code is {code}.{expiry}\n")),
        "otp_password_reset" => (
            "Reset your streamforge password".to_owned(),
            format!("Your password reset code is {code}.{expiry}\n\nIf you did not ask for it, ignore this mail.\n"),
        ),
        "duplicate_registration" => (
            "Someone tried to register with your email".to_owned(),
            "Someone tried to create a streamforge account with this email address, which already has one.\n\
             If it was you, sign in instead or reset your password. If not, you can ignore this mail.\n"
                .to_owned(),
        ),
        "welcome" => (
            "Welcome to streamforge".to_owned(),
            "Your email address is verified and your streamforge account is ready.\n\n\
             Sign in any time with your email and password.\n"
                .to_owned(),
        ),
        "password_changed" => (
            "Your streamforge password was changed".to_owned(),
            "The password of your streamforge account was just changed, and every session was signed out.\n\n\
             If this was you, nothing else to do. If not, reset your password now: someone else may know it.\n"
                .to_owned(),
        ),
        "refresh_token_reuse" => (
            "Unusual sign-in activity on your streamforge account".to_owned(),
            "A sign-in token of your streamforge account was used twice, which can mean it was copied.\n\
             We signed out that session on every device that used it.\n\n\
             If you do not recognise this, change your password.\n"
                .to_owned(),
        ),
        other => (format!("streamforge: {other}"), "You have a new notice from streamforge.\n".to_owned()),
    }
}

/// Text of an SMS delivery (short; one-time codes read "… code is 123456").
pub fn render_sms(d: &Delivery) -> String {
    let code = d.code.as_deref().unwrap_or("");
    let expiry =
        d.expires_at.map(|e| format!(" It expires at {} UTC.", e.format("%H:%M"))).unwrap_or_default();
    match d.template.as_str() {
        "otp_email_verification" | "otp_phone_verification" => {
            format!("Your streamforge verification code is {code}.{expiry}")
        }
        "otp_two_factor" | "otp_login" => format!("Your streamforge sign-in code is {code}.{expiry}"),
        "otp_password_reset" => format!("Your streamforge password reset code is {code}.{expiry}"),
        "phone_in_use" => {
            "streamforge: someone tried to add this number to another account. It stays on yours; \
                           nothing to do. If you want a new account with it, remove it from this one first."
                .to_owned()
        }
        _ if d.code.is_some() => format!("Your streamforge code is {code}.{expiry}"),
        _ => format!("streamforge: {}", render(d).0),
    }
}
