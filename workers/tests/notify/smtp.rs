//! Mail through a real SMTP listener (mailin-embedded).

use std::sync::atomic::Ordering;
use std::time::Duration;

use domain::otp::OtpChannel;
use workers::notify::Handled;
use workers::sms::SmsSender;

use crate::helpers::{policy, temp_dir, Env, Smtp};

const TO: &str = "ann@example.com";

fn no_sms() -> SmsSender {
    SmsSender::new(None, temp_dir()).unwrap()
}

#[tokio::test]
async fn smtp_refusal_then_acceptance_is_retried_and_sent_once() {
    let env = Env::new().await;
    let smtp = Smtp::start(1, false);
    let notifier = env.notifier(smtp.mailer(), no_sms(), policy(6, Duration::from_millis(200)));

    let (challenge, envelope) = env.issue_otp(OtpChannel::Email, TO, "314159").await;
    assert_eq!(notifier.handle(&envelope).await.unwrap(), Handled::RetryScheduled);
    let (attempts, error) = env.record(challenge).await.unwrap();
    assert_eq!(attempts, 1);
    assert!(error.as_deref().unwrap().starts_with("smtp: 451"), "{error:?}");
    assert!(smtp.mails().is_empty());

    tokio::time::sleep(Duration::from_millis(250)).await;
    assert_eq!(notifier.retry_due(10).await.unwrap(), vec![Handled::Sent]);
    let mails = smtp.mails();
    assert_eq!(mails.len(), 1);
    assert_eq!(mails[0].to, vec![TO.to_owned()]);
    assert!(mails[0].data.replace("=\r\n", "").contains("code is 314159"), "{}", mails[0].data);
    let events = env.events(challenge).await;
    assert_eq!(events[1].0, "OtpDelivered");
    assert_eq!(events[1].1["attempts"], 2);

    // Redelivering the same envelope after success sends nothing.
    assert_eq!(notifier.handle(&envelope).await.unwrap(), Handled::AlreadyGone);
    assert_eq!(notifier.retry_due(10).await.unwrap(), vec![]);
    assert_eq!(smtp.mails().len(), 1);
    assert_eq!(smtp.rcpts.load(Ordering::SeqCst), 2);
    assert_eq!(env.events(challenge).await.len(), 2);
    env.drop().await;
}

#[tokio::test]
async fn smtp_permanent_rejection_is_recorded_without_retry() {
    let env = Env::new().await;
    let smtp = Smtp::start(0, true);
    let notifier = env.notifier(smtp.mailer(), no_sms(), policy(6, Duration::ZERO));

    let (challenge, envelope) = env.issue_otp(OtpChannel::Email, TO, "271828").await;
    assert_eq!(notifier.handle(&envelope).await.unwrap(), Handled::Failed);
    assert_eq!(env.record(challenge).await, None);
    let events = env.events(challenge).await;
    assert_eq!(events[1].0, "OtpDeliveryFailed");
    let reason = events[1].1["reason"].as_str().unwrap().to_owned();
    assert!(reason.starts_with("smtp: 550"), "{reason}");
    assert!(!reason.contains("example.com"), "{reason}");
    assert_eq!(notifier.retry_due(10).await.unwrap(), vec![]);
    assert_eq!(smtp.rcpts.load(Ordering::SeqCst), 1);
    env.drop().await;
}

#[tokio::test]
async fn an_unreachable_smtp_server_is_retried_not_lost() {
    let env = Env::new().await;
    // A port nobody listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mailer = workers::notify::Mailer::new(Some(&format!("smtp://127.0.0.1:{port}")), temp_dir()).unwrap();
    let notifier = env.notifier(mailer, no_sms(), policy(6, Duration::from_secs(60)));

    let (challenge, envelope) = env.issue_otp(OtpChannel::Email, TO, "161803").await;
    assert_eq!(notifier.handle(&envelope).await.unwrap(), Handled::RetryScheduled);
    let (attempts, error) = env.record(challenge).await.unwrap();
    assert_eq!(attempts, 1);
    assert_eq!(error.as_deref(), Some("smtp: connection failed"));
    assert_eq!(env.events(challenge).await.len(), 1, "delivery still pending");
    env.drop().await;
}

#[tokio::test]
async fn notices_are_mailed_and_their_failures_only_logged() {
    let env = Env::new().await;
    let smtp = Smtp::start(0, false);
    let notifier = env.notifier(smtp.mailer(), no_sms(), policy(6, Duration::ZERO));

    let (welcome, welcome_env) = env.notice("welcome", TO).await;
    assert_eq!(notifier.handle(&welcome_env).await.unwrap(), Handled::Sent);
    assert_eq!(env.record(welcome).await, None);
    let mails = smtp.mails();
    assert_eq!(mails.len(), 1);
    assert!(mails[0].data.contains("Subject: Welcome to streamforge"), "{}", mails[0].data);

    let (changed, changed_env) = env.notice("password_changed", TO).await;
    assert_eq!(notifier.handle(&changed_env).await.unwrap(), Handled::Sent);
    assert_eq!(env.record(changed).await, None);
    let body = smtp.mails()[1].data.replace("=\r\n", "");
    assert!(body.contains("password of your streamforge account was just changed"), "{body}");

    // A notice to an address the server refuses: dropped, nothing recorded.
    let rejecting = Smtp::start(0, true);
    let notifier = env.notifier(rejecting.mailer(), no_sms(), policy(6, Duration::ZERO));
    let (reuse, reuse_env) = env.notice("refresh_token_reuse", TO).await;
    assert_eq!(notifier.handle(&reuse_env).await.unwrap(), Handled::Failed);
    assert_eq!(env.record(reuse).await, None);
    assert_eq!(env.event_count().await, 0, "notices record no outcome events");
    env.drop().await;
}

/// A feed batch: one claim for every record, the sends in turn, and the
/// outcomes of every code appended by one statement (one transaction),
/// which also deletes their records; a notice's record goes on its own, and
/// an event whose record is gone sends nothing.
#[tokio::test]
async fn a_batch_is_claimed_sent_and_recorded_together() {
    let env = Env::new().await;
    let smtp = Smtp::start(0, false);
    let notifier = env.notifier(smtp.mailer(), no_sms(), policy(6, Duration::ZERO));

    let mut batch = Vec::new();
    let mut challenges = Vec::new();
    for i in 0..6 {
        let (challenge, envelope) =
            env.issue_otp(OtpChannel::Email, &format!("user{i}@example.com"), &format!("11111{i}")).await;
        challenges.push(challenge);
        batch.push(envelope);
    }
    let (notice, notice_env) = env.notice("welcome", TO).await;
    batch.insert(3, notice_env);
    // A code whose record is already gone (sent by another notifier).
    let (gone, gone_env) = env.issue_otp(OtpChannel::Email, "gone@example.com", "999999").await;
    env.deliveries.delete(gone).await.unwrap();
    batch.push(gone_env);

    let handled = notifier.handle_batch(&batch).await.unwrap();
    let mut expected = vec![Handled::Sent; 7];
    expected.push(Handled::AlreadyGone);
    assert_eq!(handled, expected);

    let mut to: Vec<String> = smtp.mails().iter().flat_map(|m| m.to.clone()).collect();
    to.sort();
    let mut want: Vec<String> = (0..6).map(|i| format!("user{i}@example.com")).collect();
    want.push(TO.to_owned());
    want.sort();
    assert_eq!(to, want, "each message sent once");
    for challenge in &challenges {
        let events = env.events(*challenge).await;
        assert_eq!(events.len(), 2);
        assert_eq!(events[1].0, "OtpDelivered");
        assert_eq!(events[1].1["attempts"], 1);
        assert_eq!(env.record(*challenge).await, None, "the sent record is deleted");
    }
    assert_eq!(env.record(notice).await, None);
    assert_eq!(env.events(gone).await.len(), 1, "nothing recorded for a record that was gone");
    let appends: i64 =
        sqlx::query_scalar("SELECT count(DISTINCT txid) FROM events WHERE event_type = 'OtpDelivered'")
            .fetch_one(&env.pool)
            .await
            .unwrap();
    assert_eq!(appends, 1, "the outcomes are appended by one statement");

    // Delivered again (a crash before the acknowledgement): nothing twice.
    let again = notifier.handle_batch(&batch).await.unwrap();
    assert!(again.iter().all(|h| *h == Handled::AlreadyGone), "{again:?}");
    assert_eq!(smtp.mails().len(), 7);
    env.drop().await;
}

/// A code and its resend in one batch are handled one after the other, as
/// across batches: both are sent, the challenge records its delivery once,
/// and no record is left behind.
#[tokio::test]
async fn a_batch_with_a_code_and_its_resend_handles_them_in_order() {
    let env = Env::new().await;
    let smtp = Smtp::start(0, false);
    let notifier = env.notifier(smtp.mailer(), no_sms(), policy(6, Duration::ZERO));

    let (challenge, issued) = env.issue_otp(OtpChannel::Email, TO, "123123").await;
    let (resent, reissued) = env.reissue(challenge, OtpChannel::Email, TO, "456456").await;
    let (other, other_env) = env.issue_otp(OtpChannel::Email, "bob@example.com", "789789").await;
    let handled = notifier.handle_batch(&[issued, reissued, other_env]).await.unwrap();
    assert_eq!(handled, vec![Handled::Sent, Handled::Sent, Handled::Sent]);
    let kinds: Vec<String> = env.events(challenge).await.into_iter().map(|(kind, _)| kind).collect();
    assert_eq!(kinds, ["OtpIssued", "OtpReissued", "OtpDelivered"]);
    assert_eq!(env.record(challenge).await, None);
    assert_eq!(env.record(resent).await, None);
    assert_eq!(env.events(other).await[1].0, "OtpDelivered");
    assert_eq!(smtp.mails().len(), 3);
    env.drop().await;
}
