//! sea-orm entities of confab's three tables. The app reaches them only
//! through `confab::store`; nothing else knows the schema.

pub mod chat_messages;
pub mod chat_participants;
pub mod chats;
mod kinds;

pub use kinds::{MessageType, Role};
