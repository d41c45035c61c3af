//! The normalized text of a message that search matches against: the one
//! definition, used by the store when it writes a message (send, edit,
//! delete), by `confab::search` when it splits a query, and by the
//! migration that filled it for the messages stored before search existed.
//! A change here needs a migration that rewrites `chat_messages.search_text`.

use unicode_normalization::char::is_combining_mark;
use unicode_normalization::UnicodeNormalization;

/// A combining mark (an accent written apart from its letter): dropped
/// by `normalize`, and part of a word when the original text is read.
pub fn is_mark(c: char) -> bool {
    is_combining_mark(c)
}

/// `text` decomposed (NFKD), without combining marks, lowercased: "Café"
/// becomes "cafe", "ﬁne" becomes "fine".
pub fn normalize(text: &str) -> String {
    text.nfkd()
        .filter(|c| !is_combining_mark(*c))
        .flat_map(char::to_lowercase)
        .collect()
}

/// The words of `text` after `normalize`: its runs of Unicode letters and
/// digits, in order.
pub fn words(text: &str) -> Vec<String> {
    normalize(text)
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_owned)
        .collect()
}

/// What is stored as a message's search text: its words joined by single
/// spaces, so SQLite's FTS5 tokenizer and Postgres's `to_tsvector` see the
/// words exactly as a query splits them. Empty for a deleted message.
pub fn index_text(content: &str) -> String {
    words(content).join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folds_case_accents_and_compatibility_forms() {
        assert_eq!(normalize("Café CRÈME"), "cafe creme");
        assert_eq!(normalize("ﬁne"), "fine");
        assert_eq!(
            index_text("  Zoë's  naïve-idea, №5!"),
            "zoe s naive idea no5"
        );
        assert_eq!(words("¿Qué?"), vec!["que"]);
        assert!(words("!!! ...").is_empty());
    }
}
