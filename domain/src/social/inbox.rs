//! The `Inbox` aggregate: how far a user has read their notifications.
//! Aggregate id = the user id. Marking as read is a change like any other:
//! an event (`NotificationsRead`), never an update in place.

use chrono::{DateTime, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone)]
pub enum InboxCommand {
    /// Everything up to `up_to` is read; an earlier or equal mark changes
    /// nothing (read marks only move forward).
    MarkRead { up_to: DateTime<Utc>, at: DateTime<Utc> },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub enum InboxEvent {
    NotificationsRead { up_to: DateTime<Utc>, read_at: DateTime<Utc> },
}

impl DomainEvent for InboxEvent {
    fn event_type(&self) -> String {
        match self {
            Self::NotificationsRead { .. } => "NotificationsRead",
        }
        .to_owned()
    }

    fn event_version(&self) -> String {
        "1".to_owned()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InboxError {}

/// The read mark.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Inbox {
    pub read_up_to: Option<DateTime<Utc>>,
}

impl Aggregate for Inbox {
    const TYPE: &'static str = "inbox";
    type Command = InboxCommand;
    type Event = InboxEvent;
    type Error = InboxError;
    type Services = ();

    async fn handle(
        &mut self,
        command: InboxCommand,
        _: &(),
        sink: &EventSink<Self>,
    ) -> Result<(), InboxError> {
        let InboxCommand::MarkRead { up_to, at } = command;
        if self.read_up_to.is_none_or(|r| up_to > r) {
            sink.write(InboxEvent::NotificationsRead { up_to, read_at: at }, self).await;
        }
        Ok(())
    }

    fn apply(&mut self, event: InboxEvent) {
        let InboxEvent::NotificationsRead { up_to, .. } = event;
        self.read_up_to = Some(up_to);
    }
}

#[cfg(test)]
mod tests {
    use cqrs_es::test::TestFramework;

    use super::*;

    #[test]
    fn read_marks_only_move_forward() {
        let t = |s: i64| DateTime::from_timestamp(1_800_000_000 + s, 0).unwrap();
        let read = InboxEvent::NotificationsRead { up_to: t(10), read_at: t(11) };
        TestFramework::<Inbox>::with(())
            .given(vec![read.clone()])
            .when(InboxCommand::MarkRead { up_to: t(5), at: t(12) })
            .then_expect_events(vec![]);
        TestFramework::<Inbox>::with(())
            .given(vec![read])
            .when(InboxCommand::MarkRead { up_to: t(20), at: t(12) })
            .then_expect_events(vec![InboxEvent::NotificationsRead { up_to: t(20), read_at: t(12) }]);
    }
}
