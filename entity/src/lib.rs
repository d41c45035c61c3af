//! sea-orm entities of confab's tables. The app reaches them only
//! through `confab::store`; nothing else knows the schema.

pub mod assistant_usage;
pub mod chat_changes;
pub mod chat_messages;
pub mod chat_participants;
pub mod chat_reactions;
pub mod chats;
mod kinds;
pub mod users;

pub use kinds::{ChangeKind, MessageType, Role};
