//! SMS through the Twilio REST API, against an HTTP fake (wiremock).

use std::time::Duration;

use base64::Engine as _;
use domain::otp::OtpChannel;
use serde_json::json;
use wiremock::matchers::{body_string_contains, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};
use workers::notify::Handled;
use workers::sms::SmsSender;

use crate::helpers::{form, policy, twilio, unused_mailer, Env, VecFeed, FROM_NUMBER, SID, TOKEN};

const TO: &str = "+4915112345678";

fn messages_path() -> String {
    format!("/2010-04-01/Accounts/{SID}/Messages.json")
}

fn created() -> ResponseTemplate {
    ResponseTemplate::new(201).set_body_json(json!({
        "sid": "SM0123456789abcdef0123456789abcdef", "status": "queued"
    }))
}

async fn requests(server: &MockServer) -> Vec<wiremock::Request> {
    server.received_requests().await.unwrap_or_default()
}

fn sms(server: &MockServer) -> SmsSender {
    SmsSender::new(Some(&twilio(&server.uri())), std::path::PathBuf::from("/nonexistent")).unwrap()
}

#[tokio::test]
async fn sms_goes_to_twilio_with_the_exact_request() {
    let env = Env::new().await;
    let server = MockServer::start().await;
    Mock::given(method("POST")).and(path(messages_path())).respond_with(created()).mount(&server).await;
    let notifier = env.notifier(unused_mailer(), sms(&server), policy(6, Duration::from_millis(10)));

    let (challenge, envelope) = env.issue_otp(OtpChannel::Sms, TO, "482913").await;
    assert_eq!(notifier.handle(&envelope).await.unwrap(), Handled::Sent);

    let reqs = requests(&server).await;
    assert_eq!(reqs.len(), 1);
    let req = &reqs[0];
    assert_eq!(req.method.as_str(), "POST");
    assert_eq!(req.url.path(), messages_path());
    let basic = base64::engine::general_purpose::STANDARD.encode(format!("{SID}:{TOKEN}"));
    assert_eq!(req.headers.get("authorization").unwrap().to_str().unwrap(), format!("Basic {basic}"));
    assert_eq!(
        req.headers.get("content-type").unwrap().to_str().unwrap(),
        "application/x-www-form-urlencoded"
    );
    let fields = form(&req.body);
    assert_eq!(fields.len(), 3, "{fields:?}");
    assert_eq!(fields["To"], TO);
    assert_eq!(fields["From"], FROM_NUMBER);
    assert!(fields["Body"].contains("code is 482913"), "{}", fields["Body"]);

    // Sent: the record is gone and the challenge says delivered, once.
    assert_eq!(env.record(challenge).await, None);
    let events = env.events(challenge).await;
    assert_eq!(events.len(), 2, "{events:?}");
    assert_eq!(events[1].0, "OtpDelivered");
    assert_eq!(events[1].1["attempts"], 1);
    env.drop().await;
}

#[tokio::test]
async fn twilio_500_then_201_is_retried_with_backoff_and_sent_once() {
    let env = Env::new().await;
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(messages_path()))
        .respond_with(ResponseTemplate::new(500).set_body_json(json!({"code": 20500, "status": 500})))
        .up_to_n_times(1)
        .with_priority(1)
        .mount(&server)
        .await;
    Mock::given(method("POST")).and(path(messages_path())).respond_with(created()).mount(&server).await;
    let notifier = env.notifier(unused_mailer(), sms(&server), policy(6, Duration::from_secs(1)));

    let (challenge, envelope) = env.issue_otp(OtpChannel::Sms, TO, "111222").await;
    assert_eq!(notifier.handle(&envelope).await.unwrap(), Handled::RetryScheduled);
    assert_eq!(env.record(challenge).await, Some((1, Some("twilio: 500 code 20500".to_owned()))));
    // The event is handled (the feed moves on); the redelivered event leaves
    // the record to the retry loop.
    assert_eq!(notifier.handle(&envelope).await.unwrap(), Handled::Deferred);
    // Backing off: not due yet.
    assert_eq!(notifier.retry_due(10).await.unwrap(), vec![]);
    assert_eq!(requests(&server).await.len(), 1);

    tokio::time::sleep(Duration::from_millis(1050)).await;
    assert_eq!(notifier.retry_due(10).await.unwrap(), vec![Handled::Sent]);
    assert_eq!(requests(&server).await.len(), 2);
    assert_eq!(env.record(challenge).await, None);
    let events = env.events(challenge).await;
    let types: Vec<&str> = events.iter().map(|e| e.0.as_str()).collect();
    assert_eq!(types, ["OtpIssued", "OtpDelivered"]);
    assert_eq!(events[1].1["attempts"], 2);

    // Nothing is sent twice after success: not by the loop, not by a
    // redelivered event.
    assert_eq!(notifier.retry_due(10).await.unwrap(), vec![]);
    assert_eq!(notifier.handle(&envelope).await.unwrap(), Handled::AlreadyGone);
    assert_eq!(requests(&server).await.len(), 2);
    assert_eq!(env.events(challenge).await.len(), 2);
    env.drop().await;
}

#[tokio::test]
async fn permanent_twilio_400_records_the_failure_and_drops_the_record() {
    let env = Env::new().await;
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(messages_path()))
        .respond_with(ResponseTemplate::new(400).set_body_json(json!({
            "code": 21211,
            "message": format!("The 'To' number {TO} is not a valid phone number."),
            "more_info": "https://www.twilio.com/docs/errors/21211",
            "status": 400
        })))
        .mount(&server)
        .await;
    let notifier = env.notifier(unused_mailer(), sms(&server), policy(6, Duration::from_millis(10)));

    let (challenge, envelope) = env.issue_otp(OtpChannel::Sms, TO, "333444").await;
    assert_eq!(notifier.handle(&envelope).await.unwrap(), Handled::Failed);
    assert_eq!(env.record(challenge).await, None, "the record is deleted");
    let events = env.events(challenge).await;
    assert_eq!(events.len(), 2, "{events:?}");
    assert_eq!(events[1].0, "OtpDeliveryFailed");
    assert_eq!(events[1].1["attempts"], 1);
    assert_eq!(events[1].1["reason"], "twilio: 400 code 21211");
    assert!(!events[1].1.to_string().contains(TO), "the event must not carry the number");

    // Not retried.
    tokio::time::sleep(Duration::from_millis(30)).await;
    assert_eq!(notifier.retry_due(10).await.unwrap(), vec![]);
    assert_eq!(requests(&server).await.len(), 1);
    env.drop().await;
}

#[tokio::test]
async fn retries_end_after_max_attempts_with_a_recorded_failure() {
    let env = Env::new().await;
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(messages_path()))
        .respond_with(ResponseTemplate::new(503))
        .mount(&server)
        .await;
    let notifier = env.notifier(unused_mailer(), sms(&server), policy(3, Duration::ZERO));

    let (challenge, envelope) = env.issue_otp(OtpChannel::Sms, TO, "555666").await;
    assert_eq!(notifier.handle(&envelope).await.unwrap(), Handled::RetryScheduled);
    assert_eq!(notifier.retry_due(10).await.unwrap(), vec![Handled::RetryScheduled]);
    assert_eq!(env.record(challenge).await, Some((2, Some("twilio: 503".to_owned()))));
    assert_eq!(notifier.retry_due(10).await.unwrap(), vec![Handled::Failed]);
    assert_eq!(requests(&server).await.len(), 3);
    assert_eq!(env.record(challenge).await, None);
    let events = env.events(challenge).await;
    assert_eq!(events[1].0, "OtpDeliveryFailed");
    assert_eq!(events[1].1["attempts"], 3);
    assert_eq!(events[1].1["reason"], "twilio: 503");
    assert_eq!(notifier.retry_due(10).await.unwrap(), vec![]);
    env.drop().await;
}

#[tokio::test]
async fn a_slow_provider_times_out_and_is_retried() {
    let env = Env::new().await;
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(messages_path()))
        .respond_with(created().set_delay(Duration::from_secs(3)))
        .up_to_n_times(1)
        .with_priority(1)
        .mount(&server)
        .await;
    Mock::given(method("POST")).and(path(messages_path())).respond_with(created()).mount(&server).await;
    // A 600 ms lease abandons a send after 300 ms.
    let notifier = env.notifier(
        unused_mailer(),
        sms(&server),
        workers::notify::RetryPolicy { lease: Duration::from_millis(600), ..policy(6, Duration::ZERO) },
    );

    let (challenge, envelope) = env.issue_otp(OtpChannel::Sms, TO, "777888").await;
    assert_eq!(notifier.handle(&envelope).await.unwrap(), Handled::RetryScheduled);
    assert_eq!(env.record(challenge).await, Some((1, Some("sms: timeout".to_owned()))));
    assert_eq!(notifier.retry_due(10).await.unwrap(), vec![Handled::Sent]);
    assert_eq!(env.events(challenge).await[1].1["attempts"], 2);
    env.drop().await;
}

#[tokio::test]
async fn a_record_claimed_by_a_crashed_notifier_is_sent_after_its_lease() {
    let env = Env::new().await;
    let server = MockServer::start().await;
    Mock::given(method("POST")).and(path(messages_path())).respond_with(created()).mount(&server).await;
    let notifier = env.notifier(unused_mailer(), sms(&server), policy(6, Duration::ZERO));

    let (challenge, envelope) = env.issue_otp(OtpChannel::Sms, TO, "121212").await;
    // Another notifier claimed it (first attempt) and died before finishing.
    sqlx::query(
        "UPDATE deliveries SET attempts = 1, next_attempt_at = now() + interval '1 second', \
         source_type = 'otp_challenge', source_id = $1 WHERE delivery_id = $2",
    )
    .bind(challenge.to_string())
    .bind(challenge)
    .execute(&env.pool)
    .await
    .unwrap();
    // The event comes again after the crash: the claim is still held.
    assert_eq!(notifier.handle(&envelope).await.unwrap(), Handled::Deferred);
    assert_eq!(notifier.retry_due(10).await.unwrap(), vec![]);
    assert!(requests(&server).await.is_empty());

    tokio::time::sleep(Duration::from_millis(1050)).await;
    assert_eq!(notifier.retry_due(10).await.unwrap(), vec![Handled::Sent]);
    assert_eq!(requests(&server).await.len(), 1);
    assert_eq!(env.events(challenge).await[1].0, "OtpDelivered");
    env.drop().await;
}

#[tokio::test]
async fn concurrent_notifiers_never_send_the_same_record() {
    const N: usize = 24;
    let env = Env::new().await;
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(messages_path()))
        .respond_with(created().set_delay(Duration::from_millis(10)))
        .mount(&server)
        .await;
    let notifiers: Vec<_> =
        (0..3).map(|_| env.notifier(unused_mailer(), sms(&server), policy(6, Duration::ZERO))).collect();

    let mut challenges = Vec::new();
    for i in 0..N {
        let (challenge, _) = env.issue_otp(OtpChannel::Sms, TO, &format!("{:06}", 100_000 + i)).await;
        challenges.push(challenge);
    }
    // Every record had a failed first attempt and is due now.
    sqlx::query(
        "UPDATE deliveries SET attempts = 1, next_attempt_at = now(), \
         source_type = 'otp_challenge', source_id = delivery_id::text",
    )
    .execute(&env.pool)
    .await
    .unwrap();

    let (ra, rb, rc) =
        tokio::join!(notifiers[0].retry_due(100), notifiers[1].retry_due(100), notifiers[2].retry_due(100));
    let all: Vec<Handled> = [ra.unwrap(), rb.unwrap(), rc.unwrap()].concat();
    assert_eq!(all.len(), N, "each record claimed exactly once: {all:?}");
    assert!(all.iter().all(|h| *h == Handled::Sent), "{all:?}");
    assert_eq!(requests(&server).await.len(), N);
    for c in challenges {
        let delivered: Vec<_> = env.events(c).await.into_iter().filter(|e| e.0 == "OtpDelivered").collect();
        assert_eq!(delivered.len(), 1);
        assert_eq!(delivered[0].1["attempts"], 2);
    }
    env.drop().await;
}

#[tokio::test]
async fn a_failing_recipient_does_not_block_the_feed() {
    let env = Env::new().await;
    let server = MockServer::start().await;
    let bad = "+4915100000001";
    Mock::given(method("POST"))
        .and(path(messages_path()))
        .and(body_string_contains("To=%2B4915100000001"))
        .respond_with(ResponseTemplate::new(500))
        .with_priority(1)
        .mount(&server)
        .await;
    Mock::given(method("POST")).and(path(messages_path())).respond_with(created()).mount(&server).await;
    let notifier = env.notifier(unused_mailer(), sms(&server), policy(6, Duration::from_secs(60)));

    let (bad_challenge, bad_env) = env.issue_otp(OtpChannel::Sms, bad, "909090").await;
    let (good_challenge, good_env) = env.issue_otp(OtpChannel::Sms, TO, "808080").await;
    let mut feed = VecFeed::new(vec![bad_env, good_env]);
    let read = notifier.run_once(&mut feed, 10, Duration::from_millis(10)).await.unwrap();
    assert_eq!(read, 2);
    assert_eq!(feed.commits, 1, "the batch is acknowledged");
    assert_eq!(env.events(good_challenge).await[1].0, "OtpDelivered");
    assert_eq!(env.record(bad_challenge).await, Some((1, Some("twilio: 500".to_owned()))));
    assert_eq!(env.events(bad_challenge).await.len(), 1, "still pending");
    env.drop().await;
}

#[tokio::test]
async fn expired_codes_are_not_sent() {
    let env = Env::new().await;
    let server = MockServer::start().await;
    Mock::given(method("POST")).and(path(messages_path())).respond_with(created()).mount(&server).await;
    let notifier = env.notifier(unused_mailer(), sms(&server), policy(6, Duration::ZERO));

    let (challenge, envelope) = env.issue_otp(OtpChannel::Sms, TO, "246810").await;
    sqlx::query("UPDATE deliveries SET expires_at = now() - interval '1 second' WHERE delivery_id = $1")
        .bind(challenge)
        .execute(&env.pool)
        .await
        .unwrap();
    assert_eq!(notifier.handle(&envelope).await.unwrap(), Handled::Expired);
    assert!(requests(&server).await.is_empty());
    assert_eq!(env.record(challenge).await, None);
    let events = env.events(challenge).await;
    assert_eq!(events[1].0, "OtpDeliveryFailed");
    assert_eq!(events[1].1["reason"], "expired before delivery");
    env.drop().await;
}

#[tokio::test]
async fn without_twilio_sms_are_written_as_files() {
    let env = Env::new().await;
    let dir = crate::helpers::temp_dir();
    let sms = SmsSender::new(None, dir.clone()).unwrap();
    let notifier = env.notifier(unused_mailer(), sms, policy(6, Duration::ZERO));

    let (challenge, envelope) = env.issue_otp(OtpChannel::Sms, TO, "135790").await;
    assert_eq!(notifier.handle(&envelope).await.unwrap(), Handled::Sent);
    let text = std::fs::read_to_string(dir.join(format!("{challenge}.sms"))).unwrap();
    assert!(text.starts_with(&format!("To: {TO}\n")), "{text}");
    assert!(text.contains("code is 135790"), "{text}");
    assert_eq!(env.events(challenge).await[1].0, "OtpDelivered");
    let _ = std::fs::remove_dir_all(dir);
    env.drop().await;
}

#[tokio::test]
async fn a_resent_code_supersedes_the_pending_old_one() {
    let env = Env::new().await;
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(messages_path()))
        .respond_with(ResponseTemplate::new(500))
        .up_to_n_times(1)
        .with_priority(1)
        .mount(&server)
        .await;
    Mock::given(method("POST")).and(path(messages_path())).respond_with(created()).mount(&server).await;
    let notifier = env.notifier(unused_mailer(), sms(&server), policy(6, Duration::ZERO));

    let (challenge, issued) = env.issue_otp(OtpChannel::Sms, TO, "100001").await;
    assert_eq!(notifier.handle(&issued).await.unwrap(), Handled::RetryScheduled);
    let (second, reissued) = env.reissue(challenge, OtpChannel::Sms, TO, "200002").await;
    assert_eq!(notifier.handle(&reissued).await.unwrap(), Handled::Sent);
    assert_eq!(env.record(challenge).await, None, "the old code's record is dropped");
    assert_eq!(env.record(second).await, None);
    assert_eq!(notifier.retry_due(10).await.unwrap(), vec![]);

    // Replaying both events (a feed redelivery) sends nothing and drops nothing new.
    assert_eq!(notifier.handle(&issued).await.unwrap(), Handled::AlreadyGone);
    assert_eq!(notifier.handle(&reissued).await.unwrap(), Handled::AlreadyGone);

    let reqs = requests(&server).await;
    assert_eq!(reqs.len(), 2);
    assert!(form(&reqs[1].body)["Body"].contains("code is 200002"));
    let types: Vec<String> = env.events(challenge).await.into_iter().map(|e| e.0).collect();
    assert_eq!(types, ["OtpIssued", "OtpReissued", "OtpDelivered"]);
    env.drop().await;
}

#[tokio::test]
async fn a_replayed_old_event_does_not_drop_the_newer_code() {
    let env = Env::new().await;
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(messages_path()))
        .respond_with(ResponseTemplate::new(503))
        .mount(&server)
        .await;
    let notifier = env.notifier(unused_mailer(), sms(&server), policy(6, Duration::from_secs(60)));

    let (challenge, issued) = env.issue_otp(OtpChannel::Sms, TO, "300003").await;
    let (second, reissued) = env.reissue(challenge, OtpChannel::Sms, TO, "400004").await;
    assert_eq!(notifier.handle(&issued).await.unwrap(), Handled::RetryScheduled);
    assert_eq!(notifier.handle(&reissued).await.unwrap(), Handled::RetryScheduled);
    assert_eq!(env.record(challenge).await, None);
    // The batch is delivered again (e.g. after a crash before the commit).
    assert_eq!(notifier.handle(&issued).await.unwrap(), Handled::AlreadyGone);
    assert_eq!(env.record(second).await.map(|r| r.0), Some(1), "the newer code is still pending");
    env.drop().await;
}
