//! Message search: why it exists as a module of its own. The two databases
//! index text differently (SQLite's FTS5, Postgres's tsvector with a GIN
//! index), and this is the one place that knows both: it turns a query into
//! words the way the store indexed them (`migration::search_text`), runs the
//! query of the node's database behind one function (`search`), and cuts
//! the snippet of each hit from the message's original content.
//!
//! The index itself is the store's: `chat_messages.search_text` is written
//! in the same statement as every send, edit and delete, so a message is
//! found by its current text only, within the transaction that changed it.
//! Every query reads the full-text index and the caller's participant rows:
//! no scan of the messages table.

use migration::search_text::{is_mark, words as split_words};
use sea_orm::{DbBackend, DbErr, Statement, Value};

use crate::model::{ConversationId, Message, UserId};
use crate::store::{Store, MESSAGE_COLUMNS};

/// Most characters in a query.
pub const MAX_QUERY_CHARS: usize = 200;
/// Most words of a query that are matched; the rest are ignored.
pub const MAX_WORDS: usize = 10;
/// Results per page: the default and the most.
pub const DEFAULT_LIMIT: u64 = 20;
pub const MAX_LIMIT: u64 = 50;
/// The deepest a cursor reaches into the ranked results.
pub const MAX_OFFSET: u64 = 1000;
/// Most characters of a snippet's excerpt (an ellipsis at a cut end comes on top).
pub const SNIPPET_CHARS: usize = 160;
/// Characters of context a snippet keeps before its match, when it can.
const SNIPPET_LEAD: usize = 40;

/// A checked search: the words to find (each as a prefix), where, and
/// which page of the ranked results.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Query {
    words: Vec<String>,
    conversation: Option<ConversationId>,
    limit: u64,
    offset: u64,
}

/// Why a query was refused: a message for the client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Invalid(pub String);

impl Query {
    /// Checks a request: `q` has 1 to `MAX_QUERY_CHARS` characters and a
    /// word; `limit` is 1 to `MAX_LIMIT`; `cursor`, if any, is one this
    /// server gave for the same `q` and `conversation`.
    pub fn parse(
        q: &str,
        conversation: Option<ConversationId>,
        limit: Option<u64>,
        cursor: Option<&str>,
    ) -> Result<Query, Invalid> {
        let invalid = |why: &str| Invalid(why.to_owned());
        if q.chars().count() > MAX_QUERY_CHARS {
            return Err(Invalid(format!(
                "`q` is longer than {MAX_QUERY_CHARS} characters"
            )));
        }
        let mut words = split_words(q);
        if words.is_empty() {
            return Err(invalid("`q` has no word to search for"));
        }
        words.truncate(MAX_WORDS);
        let limit = limit.unwrap_or(DEFAULT_LIMIT);
        if !(1..=MAX_LIMIT).contains(&limit) {
            return Err(Invalid(format!("`limit` is 1 to {MAX_LIMIT}")));
        }
        let mut query = Query {
            words,
            conversation,
            limit,
            offset: 0,
        };
        if let Some(cursor) = cursor {
            query.offset = query
                .read_cursor(cursor)
                .ok_or_else(|| invalid("not a cursor this server gave for this search"))?;
        }
        Ok(query)
    }

    /// The words searched for, normalized.
    pub fn words(&self) -> &[String] {
        &self.words
    }

    pub fn conversation(&self) -> Option<ConversationId> {
        self.conversation
    }

    /// The cursor of the page at `offset`: the offset into the ranked
    /// results and a digest of the search it belongs to.
    fn cursor_at(&self, offset: u64) -> String {
        format!("{offset}.{:016x}", self.digest())
    }

    fn read_cursor(&self, cursor: &str) -> Option<u64> {
        let (offset, digest) = cursor.split_once('.')?;
        let offset: u64 = offset.parse().ok()?;
        let digest = u64::from_str_radix(digest, 16).ok()?;
        (digest == self.digest() && offset <= MAX_OFFSET && offset.to_string().len() < 8)
            .then_some(offset)
    }

    /// FNV-1a over the words and the conversation: stable across nodes
    /// and versions, unlike `std`'s hasher.
    fn digest(&self) -> u64 {
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        let conv = self
            .conversation
            .map(|c| c.0.to_string())
            .unwrap_or_default();
        for byte in self.words.join(" ").bytes().chain([0]).chain(conv.bytes()) {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
        hash
    }
}

/// One message found.
#[derive(Clone, Debug)]
pub struct Hit {
    pub message: Message,
    /// An excerpt of the message's content around its first match.
    pub snippet: String,
}

/// A page of results, best first, and the cursor of the next page.
#[derive(Clone, Debug)]
pub struct Found {
    pub hits: Vec<Hit>,
    pub next_cursor: Option<String>,
}

/// The messages matching `query` in conversations `user` is a participant
/// of now, not deleted, best match first (then newest): FTS5's bm25 on
/// SQLite, `ts_rank` on Postgres.
pub async fn search(store: &Store, user: &UserId, query: &Query) -> Result<Found, DbErr> {
    let backend = store.connection().get_database_backend();
    let mut values: Vec<Value> = vec![user.as_str().into()];
    let conv_filter = |values: &mut Vec<Value>, n: usize| match query.conversation {
        Some(conv) => {
            values.push(conv.0.into());
            match backend {
                DbBackend::Postgres => format!(" AND m.chat_id = ${n}"),
                _ => " AND m.chat_id = ?".to_owned(),
            }
        }
        None => String::new(),
    };
    let sql = match backend {
        DbBackend::Postgres => {
            let terms: Vec<String> = query.words.iter().map(|w| format!("{w}:*")).collect();
            values.push(terms.join(" & ").into());
            let conv = conv_filter(&mut values, 3);
            format!(
                "SELECT {MESSAGE_COLUMNS} FROM chat_messages m \
                 JOIN chat_participants p ON p.chat_id = m.chat_id AND p.user_id = $1 \
                 WHERE m.search_vector @@ to_tsquery('simple', $2) AND NOT m.deleted{conv} \
                 ORDER BY ts_rank(m.search_vector, to_tsquery('simple', $2)) DESC, \
                 m.created_at DESC, m.seq DESC, m.id \
                 LIMIT {} OFFSET {}",
                query.limit + 1,
                query.offset
            )
        }
        _ => {
            let terms: Vec<String> = query.words.iter().map(|w| format!("\"{w}\"*")).collect();
            values.push(terms.join(" AND ").into());
            let conv = conv_filter(&mut values, 3);
            format!(
                "SELECT {MESSAGE_COLUMNS} FROM message_search \
                 JOIN chat_messages m ON m.search_key = message_search.rowid \
                 JOIN chat_participants p ON p.chat_id = m.chat_id AND p.user_id = ? \
                 WHERE message_search MATCH ? AND m.deleted = 0{conv} \
                 ORDER BY bm25(message_search), m.created_at DESC, m.seq DESC, m.id \
                 LIMIT {} OFFSET {}",
                query.limit + 1,
                query.offset
            )
        }
    };
    // SQLite takes `?` in order: the participant's id comes first there too.
    let mut messages = store
        .query_messages(Statement::from_sql_and_values(backend, sql, values))
        .await?;
    let more = messages.len() as u64 > query.limit;
    messages.truncate(query.limit as usize);
    let next = query.offset + query.limit;
    let next_cursor = (more && next <= MAX_OFFSET).then(|| query.cursor_at(next));
    let hits = messages
        .into_iter()
        .map(|message| Hit {
            snippet: snippet(&message.content, &query.words),
            message,
        })
        .collect();
    Ok(Found { hits, next_cursor })
}

/// An excerpt of `content` (the original text, not the normalized one)
/// around the first word that one of `words` begins: at most
/// `SNIPPET_CHARS` characters, cut at spaces where it can, with `…` at
/// each end that was cut, and runs of white space shown as one space.
pub fn snippet(content: &str, words: &[String]) -> String {
    let chars: Vec<char> = content.chars().collect();
    let n = chars.len();
    let at = first_match(&chars, words).unwrap_or(0);
    let (mut start, mut end) = (0, n);
    if n > SNIPPET_CHARS {
        start = at.saturating_sub(SNIPPET_LEAD).min(n - SNIPPET_CHARS);
        end = start + SNIPPET_CHARS;
        // Whole words at the cut ends, when a space is near.
        if start > 0 {
            if let Some(space) = chars[start..at].iter().position(|c| c.is_whitespace()) {
                start += space + 1;
            }
        }
        if end < n {
            if let Some(space) = chars[at..end].iter().rposition(|c| c.is_whitespace()) {
                end = at + space;
            }
        }
    }
    let mut out = String::new();
    if start > 0 {
        out.push('…');
    }
    let (mut pending_space, mut any) = (false, false);
    for &c in &chars[start..end] {
        if c.is_whitespace() {
            pending_space = any;
            continue;
        }
        if pending_space {
            out.push(' ');
            pending_space = false;
        }
        out.push(c);
        any = true;
    }
    if end < n {
        out.push('…');
    }
    out
}

/// The character index of the first word of `chars` that, normalized,
/// begins with one of `words`. A word is a run of letters, digits and
/// combining marks (which normalization drops, as it does in the index).
fn first_match(chars: &[char], words: &[String]) -> Option<usize> {
    let is_word = |c: &char| c.is_alphanumeric() || is_mark(*c);
    let mut i = 0;
    while i < chars.len() {
        if !is_word(&chars[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < chars.len() && is_word(&chars[i]) {
            i += 1;
        }
        let original: String = chars[start..i].iter().collect();
        let found = split_words(&original)
            .iter()
            .any(|piece| words.iter().any(|w| piece.starts_with(w.as_str())));
        if found {
            return Some(start);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(text: &str) -> Query {
        Query::parse(text, None, None, None).unwrap()
    }

    #[test]
    fn queries_are_checked() {
        assert_eq!(q("Café  CRÈME!").words(), ["cafe", "creme"]);
        assert!(Query::parse("", None, None, None).is_err());
        assert!(Query::parse("?! ...", None, None, None).is_err());
        assert!(Query::parse(&"a".repeat(201), None, None, None).is_err());
        assert!(Query::parse(&"a".repeat(200), None, None, None).is_ok());
        assert!(Query::parse("a", None, Some(0), None).is_err());
        assert!(Query::parse("a", None, Some(51), None).is_err());
        let many = (0..20)
            .map(|i| format!("w{i}"))
            .collect::<Vec<_>>()
            .join(" ");
        assert_eq!(q(&many).words().len(), MAX_WORDS);
    }

    #[test]
    fn cursors_belong_to_their_search() {
        let first = q("hello world");
        let cursor = first.cursor_at(20);
        let second = Query::parse("Hello, WORLD", None, None, Some(&cursor)).unwrap();
        assert_eq!(second.offset, 20);
        assert!(Query::parse("hello", None, None, Some(&cursor)).is_err());
        let conv = Some(ConversationId(uuid::Uuid::now_v7()));
        assert!(Query::parse("hello world", conv, None, Some(&cursor)).is_err());
        assert!(Query::parse("hello world", None, None, Some("x")).is_err());
        let deep = first.cursor_at(MAX_OFFSET + 1);
        assert!(Query::parse("hello world", None, None, Some(&deep)).is_err());
    }

    #[test]
    fn snippets_come_from_the_original_text() {
        let words = q("cafe").words;
        assert_eq!(
            snippet("Un Café,  s'il\nvous plaît", &words),
            "Un Café, s'il vous plaît"
        );
        let long = format!("{} Café noir {}", "début ".repeat(40), "fin ".repeat(60));
        let cut = snippet(&long, &words);
        assert!(cut.starts_with('…') && cut.ends_with('…'), "{cut}");
        assert!(cut.contains("Café noir"), "{cut}");
        assert!(cut.chars().count() <= SNIPPET_CHARS + 2, "{cut}");
        // Decomposed accents (e + U+0301) match too.
        let decomposed = "Le cafe\u{301} est chaud";
        assert_eq!(snippet(decomposed, &words), decomposed);
        // The first match, not the first word.
        let late = format!("{}cafeteria", "x ".repeat(200));
        assert!(snippet(&late, &words).contains("cafeteria"));
    }
}
