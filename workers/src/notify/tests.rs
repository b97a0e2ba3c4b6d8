use super::*;

#[test]
fn backoff_doubles_and_caps() {
    let p = RetryPolicy::default();
    assert_eq!(p.delay_after(1), Duration::from_secs(2));
    assert_eq!(p.delay_after(2), Duration::from_secs(4));
    assert_eq!(p.delay_after(5), Duration::from_secs(32));
    assert_eq!(p.delay_after(8), Duration::from_secs(256));
    assert_eq!(p.delay_after(9), Duration::from_secs(300));
    assert_eq!(p.delay_after(u32::MAX), Duration::from_secs(300));
}

fn delivery(template: &str, code: Option<&str>) -> Delivery {
    Delivery {
        channel: "sms".into(),
        to: "+15005550006".into(),
        template: template.into(),
        code: code.map(str::to_owned),
        expires_at: None,
    }
}

#[test]
fn notices_have_their_own_templates() {
    for t in ["welcome", "password_changed", "refresh_token_reuse", "duplicate_registration"] {
        let (subject, body) = render(&delivery(t, None));
        assert!(!subject.starts_with("streamforge: "), "{t} falls back to the generic notice");
        assert!(!body.contains("new notice"), "{t}");
    }
}

#[test]
fn sms_carry_the_code() {
    assert!(render_sms(&delivery("otp_login", Some("123456"))).contains("code is 123456"));
    assert!(render_sms(&delivery("otp_unknown", Some("654321"))).contains("code is 654321"));
    assert!(render_sms(&delivery("welcome", None)).starts_with("streamforge: Welcome"));
}
