//! The conversation log: a conversation is one sequence of entries, each a
//! new message or a change of one (an edit, a deletion, a reaction added or
//! removed), each with its own seq. The rules of who may change what, and
//! which changes change nothing, live here, free of IO, so the store
//! applies them inside its transaction and the tests below state them.

use chrono::{DateTime, Utc};
use poem_openapi::Object;
use serde::{Deserialize, Serialize};

use super::{ChangeKind, Emoji, Message, MessageId, MessageType, Seq, UserId};

/// Most reactors named per emoji; `count` has them all.
pub const MAX_REACTORS_SHOWN: usize = 20;

/// One emoji's reactions on a message, as clients see them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Object)]
pub struct Reaction {
    pub emoji: Emoji,
    pub count: u64,
    /// The first reactors, oldest first (at most 20).
    pub user_ids: Vec<UserId>,
}

/// A change as `message_updated` tells it: what happened, by whom.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Object)]
pub struct Change {
    pub kind: ChangeKind,
    pub by: UserId,
    /// The reaction's emoji (reaction kinds only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[oai(skip_serializing_if_is_none)]
    pub emoji: Option<Emoji>,
}

/// One entry of a conversation's log, with its message's current state.
#[derive(Clone, Debug, PartialEq)]
pub enum LogEntry {
    /// A new message (its own seq).
    Message(Message),
    /// A change of `message`, at `seq`.
    Change {
        seq: Seq,
        change: Change,
        message: Message,
    },
}

impl LogEntry {
    pub fn seq(&self) -> Seq {
        match self {
            LogEntry::Message(m) => m.seq,
            LogEntry::Change { seq, .. } => *seq,
        }
    }

    /// The message the entry is about.
    pub fn message_id(&self) -> MessageId {
        match self {
            LogEntry::Message(m) | LogEntry::Change { message: m, .. } => m.id,
        }
    }
}

/// A change a participant asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ChangeRequest {
    Edit { content: String },
    Delete,
    React { emoji: Emoji, add: bool },
}

/// What the store knows of the target when the rules decide.
#[derive(Debug)]
pub struct Target<'a> {
    pub message: &'a Message,
    /// The actor owns the conversation.
    pub actor_is_owner: bool,
    /// The actor has reacted with the request's emoji already.
    pub reacted: bool,
}

/// Why a change is refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("{0} not found")]
    NotFound(&'static str),
    #[error("{0}")]
    Forbidden(&'static str),
    #[error("the conversation is archived")]
    Archived,
    #[error("a message holds at most {max} different reactions")]
    TooManyReactions { max: usize },
}

/// What a change that is allowed does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// It changes nothing: acknowledged, no seq, no broadcast.
    Unchanged,
    /// It takes the next seq.
    Apply,
}

impl ChangeRequest {
    pub fn kind(&self) -> ChangeKind {
        match self {
            ChangeRequest::Edit { .. } => ChangeKind::Edited,
            ChangeRequest::Delete => ChangeKind::Deleted,
            ChangeRequest::React { add: true, .. } => ChangeKind::ReactionAdded,
            ChangeRequest::React { add: false, .. } => ChangeKind::ReactionRemoved,
        }
    }

    /// The change as its frame tells it, made by `by`.
    pub fn change(&self, by: &UserId) -> Change {
        Change {
            kind: self.kind(),
            by: by.clone(),
            emoji: match self {
                ChangeRequest::React { emoji, .. } => Some(emoji.clone()),
                _ => None,
            },
        }
    }

    /// Whether `actor` may make this change to `target`, and whether it
    /// changes anything. `max_reactions` bounds a message's distinct emojis.
    pub fn decide(
        &self,
        actor: &UserId,
        target: &Target<'_>,
        max_reactions: usize,
    ) -> Result<Decision, Refusal> {
        let message = target.message;
        if message.deleted {
            return Err(Refusal::NotFound("message"));
        }
        let own = &message.sender_id == actor;
        match self {
            ChangeRequest::Edit { content } => {
                if message.message_type != MessageType::User {
                    return Err(Refusal::Forbidden("only user messages can be edited"));
                }
                if !own {
                    return Err(Refusal::Forbidden("only its sender may edit a message"));
                }
                Ok(if content == &message.content {
                    Decision::Unchanged
                } else {
                    Decision::Apply
                })
            }
            ChangeRequest::Delete => {
                if !own && !target.actor_is_owner {
                    return Err(Refusal::Forbidden(
                        "only its sender or the conversation's owner may delete a message",
                    ));
                }
                Ok(Decision::Apply)
            }
            ChangeRequest::React { add: true, emoji } => {
                if target.reacted {
                    return Ok(Decision::Unchanged);
                }
                let known = message.reactions.iter().any(|r| &r.emoji == emoji);
                if !known && message.reactions.len() >= max_reactions {
                    return Err(Refusal::TooManyReactions { max: max_reactions });
                }
                Ok(Decision::Apply)
            }
            ChangeRequest::React { add: false, .. } => Ok(if target.reacted {
                Decision::Apply
            } else {
                Decision::Unchanged
            }),
        }
    }
}

impl Message {
    /// Applies an edit or a deletion made at `at` (reactions are counted by
    /// the store, which knows every reactor).
    pub fn apply(&mut self, request: &ChangeRequest, at: DateTime<Utc>) {
        match request {
            ChangeRequest::Edit { content } => {
                self.content = content.clone();
                self.edited_at = Some(at);
            }
            ChangeRequest::Delete => {
                self.content = String::new();
                self.deleted = true;
                self.reactions.clear();
                self.attachments.clear();
            }
            ChangeRequest::React { .. } => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ConversationId;

    fn user(id: &str) -> UserId {
        UserId::parse(id).unwrap()
    }

    fn message(sender: &str) -> Message {
        Message {
            id: MessageId::new(),
            conversation_id: ConversationId::new(),
            seq: Seq(1),
            sender_id: user(sender),
            message_type: MessageType::User,
            content: "hello".into(),
            client_msg_id: None,
            metadata: None,
            created_at: Utc::now(),
            reply_to: None,
            attachments: Vec::new(),
            reactions: Vec::new(),
            edited_at: None,
            deleted: false,
        }
    }

    fn target(message: &Message, owner: bool, reacted: bool) -> Target<'_> {
        Target {
            message,
            actor_is_owner: owner,
            reacted,
        }
    }

    fn edit(text: &str) -> ChangeRequest {
        ChangeRequest::Edit {
            content: text.into(),
        }
    }

    fn react(emoji: &str, add: bool) -> ChangeRequest {
        ChangeRequest::React {
            emoji: Emoji::parse(emoji).unwrap(),
            add,
        }
    }

    #[test]
    fn only_the_sender_edits_a_user_message_and_the_same_text_is_a_no_op() {
        let m = message("ann");
        let ann = user("ann");
        let bob = user("bob");
        assert_eq!(
            edit("hi").decide(&ann, &target(&m, false, false), 20),
            Ok(Decision::Apply)
        );
        assert_eq!(
            edit("hello").decide(&ann, &target(&m, false, false), 20),
            Ok(Decision::Unchanged)
        );
        assert!(matches!(
            edit("hi").decide(&bob, &target(&m, true, false), 20),
            Err(Refusal::Forbidden(_))
        ));
        let mut answer = message("echo");
        answer.message_type = MessageType::Assistant;
        let echo = user("echo");
        assert!(matches!(
            edit("hi").decide(&echo, &target(&answer, false, false), 20),
            Err(Refusal::Forbidden(_))
        ));
    }

    #[test]
    fn the_sender_or_the_owner_deletes_and_a_deleted_message_is_gone() {
        let mut m = message("ann");
        let bob = user("bob");
        assert!(ChangeRequest::Delete
            .decide(&bob, &target(&m, false, false), 20)
            .is_err());
        assert_eq!(
            ChangeRequest::Delete.decide(&bob, &target(&m, true, false), 20),
            Ok(Decision::Apply)
        );
        m.apply(&ChangeRequest::Delete, Utc::now());
        assert!(m.deleted && m.content.is_empty());
        for request in [ChangeRequest::Delete, edit("x"), react("👍", true)] {
            assert_eq!(
                request.decide(&user("ann"), &target(&m, true, false), 20),
                Err(Refusal::NotFound("message"))
            );
        }
    }

    #[test]
    fn reactions_are_no_ops_when_nothing_changes_and_bounded_in_emojis() {
        let mut m = message("ann");
        let bob = user("bob");
        assert_eq!(
            react("👍", true).decide(&bob, &target(&m, false, true), 2),
            Ok(Decision::Unchanged)
        );
        assert_eq!(
            react("👍", false).decide(&bob, &target(&m, false, false), 2),
            Ok(Decision::Unchanged)
        );
        assert_eq!(
            react("👍", false).decide(&bob, &target(&m, false, true), 2),
            Ok(Decision::Apply)
        );
        for e in ["👍", "🎉"] {
            m.reactions.push(Reaction {
                emoji: Emoji::parse(e).unwrap(),
                count: 1,
                user_ids: vec![user("ann")],
            });
        }
        assert_eq!(
            react("❤", true).decide(&bob, &target(&m, false, false), 2),
            Err(Refusal::TooManyReactions { max: 2 })
        );
        // Joining an emoji already there adds no new one.
        assert_eq!(
            react("🎉", true).decide(&bob, &target(&m, false, false), 2),
            Ok(Decision::Apply)
        );
    }

    #[test]
    fn an_edit_stamps_edited_at() {
        let mut m = message("ann");
        let at = Utc::now();
        m.apply(&edit("new"), at);
        assert_eq!((m.content.as_str(), m.edited_at), ("new", Some(at)));
    }
}
