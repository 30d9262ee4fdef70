//! Unicode rules, in two separate sets: which user names are allowed and which
//! look alike, and which characters a client escapes before printing received
//! text to a terminal.
//!
//! They are kept apart because they answer different questions. A name must be
//! visible and unmistakable, so it refuses anything invisible; message text
//! must reach the reader intact, so display escaping touches only what could
//! drive the terminal or reorder what it shows, and keeps ZWJ emoji sequences,
//! ZWNJ in Persian and variation selectors.

use std::borrow::Cow;

use unicode_normalization::UnicodeNormalization;
use unicode_security::skeleton;

/// Longest name, in characters.
pub const MAX_NAME_CHARS: usize = 32;

/// Blank-looking characters that are not whitespace. U+2800 is not
/// default-ignorable; the Hangul fillers are in today's Unicode data, listed
/// anyway so the rule does not hang on one table.
const BLANK_FILLERS: [char; 5] = ['\u{2800}', '\u{3164}', '\u{115F}', '\u{1160}', '\u{FFA0}'];

/// Why a name or room name is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// Nothing was given.
    #[error("it is empty")]
    Empty,
    /// Over the length limit.
    #[error("it is longer than {max} characters")]
    TooLong {
        /// The limit, in characters.
        max: usize,
    },
    /// Holds a space, tab, line break or other whitespace.
    #[error("it contains whitespace")]
    Whitespace,
    /// Holds a control character.
    #[error("it contains control characters")]
    Control,
    /// Holds a default-ignorable character (zero-width characters,
    /// bidirectional controls, variation selectors, soft hyphen, ...) or a blank
    /// filler: it would look like another name, or like nothing.
    #[error("it contains invisible or blank characters")]
    Invisible,
    /// A room name holds something other than letters, digits, `-`, `_` or `.`.
    #[error("room names use only letters, digits, '-', '_' and '.'")]
    RoomCharacter,
    /// A room name that is a path of the server's own, or `.` or `..`.
    #[error("it is reserved")]
    Reserved,
    /// Holds the mark of guests' names, or a look-alike of it.
    #[error("it contains '{}' or a look-alike, which marks guests", super::GUEST_MARK)]
    GuestMark,
}

/// Checks a user name: 1 to [`MAX_NAME_CHARS`] characters, none of them
/// whitespace, control characters, `Default_Ignorable_Code_Point`s, blank
/// fillers, or the guest mark ([`super::GUEST_MARK`]) or anything whose
/// look-alike key holds it (`～`).
pub fn validate_name(name: &str) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::Empty);
    }
    if name.chars().count() > MAX_NAME_CHARS {
        return Err(NameError::TooLong { max: MAX_NAME_CHARS });
    }
    if name.chars().any(char::is_whitespace) {
        return Err(NameError::Whitespace);
    }
    if name.chars().any(char::is_control) {
        return Err(NameError::Control);
    }
    if name.chars().any(is_invisible) {
        return Err(NameError::Invisible);
    }
    // Only the server adds the mark, to guests' names.
    if name.contains(super::GUEST_MARK) || name_key(name).contains(super::GUEST_MARK) {
        return Err(NameError::GuestMark);
    }
    // Nor may a name start with what passes for the mark at a glance, which
    // the look-alike key keeps apart (`˜bob` would pass for the guest `~bob`).
    if name.chars().next().is_some_and(|c| TILDE_LIKE.contains(&c)) {
        return Err(NameError::GuestMark);
    }
    Ok(())
}

/// Characters that look like the guest mark `~` but that the look-alike key
/// keeps apart; a name may hold them, but not first. Combining tildes
/// first would sit on nothing, or on what comes before the name.
const TILDE_LIKE: &[char] = &[
    '\u{02DC}', '\u{02F7}', '\u{1FC0}', '\u{2053}', '\u{223C}', '\u{2248}', '\u{2307}', '\u{2E2F}',
    '\u{301C}', '\u{3030}', '\u{FE4B}', '\u{FF5E}', '\u{0303}', '\u{0330}', '\u{0334}', '\u{0342}',
    '\u{0360}', '\u{033E}',
];

/// Whether `c` shows as nothing, or as something it is not: a
/// `Default_Ignorable_Code_Point`, a format character (`General_Category` Cf,
/// which also holds the few that are not default-ignorable, such as the
/// Arabic number signs U+0600..U+0605), or a blank filler.
pub fn is_invisible(c: char) -> bool {
    use unicode_properties::{GeneralCategory, UnicodeGeneralCategory as _};
    // Bidirectional controls are default-ignorable too; named so that names
    // stay display-safe whatever the table says.
    is_default_ignorable(c)
        || is_bidi_control(c)
        || BLANK_FILLERS.contains(&c)
        || c.general_category() == GeneralCategory::Format
}

/// Whether `c` is a `Default_Ignorable_Code_Point`. unicode-security keeps that
/// table private, but its skeleton (UTS #39) drops exactly those characters: in
/// 0.1.3 a character's skeleton is empty if and only if it is one (checked for
/// every code point). `IdentifierType::Default_Ignorable` would miss the
/// deprecated U+206A..U+206F and U+E0001, and the unassigned ones.
fn is_default_ignorable(c: char) -> bool {
    !c.is_ascii() && skeleton(c.encode_utf8(&mut [0; 4])).next().is_none()
}

/// The key names are compared by: two names with the same key look alike and
/// cannot both be held in a room. It is the UTS #39 skeleton of the name
/// normalized (NFKC) and case-folded, so `Alice`, `аlice` (Cyrillic `а`) and
/// `ａｌｉｃｅ` (fullwidth) all have the key of `alice`.
pub fn name_key(name: &str) -> String {
    // NFKC, lowercase, NFKC again: the shape of Unicode's NFKC_Casefold, since
    // lowercasing can leave text that is no longer NFKC. std's lowercase
    // stands in for case folding; they differ on a few letters (`ß` stays,
    // final `ς` is not made `σ`).
    let folded: String = name.nfkc().flat_map(char::to_lowercase).nfkc().collect();
    // The skeleton's prototypes may be capitals (`0` becomes `O`): lowercased
    // once more, so `b0b` and `bob` clash too.
    skeleton(&folded).flat_map(char::to_lowercase).collect()
}

/// Whether a client escapes `c` before printing it: control characters (tab
/// excepted), bidirectional controls, which reorder what follows, and the line
/// breaks U+2028 and U+2029, since the client breaks lines itself.
/// Zero-width joiners, variation selectors and combining marks are kept: text
/// needs them.
pub fn needs_display_escape(c: char) -> bool {
    (c.is_control() && c != '\t') || is_bidi_control(c) || matches!(c, '\u{2028}' | '\u{2029}')
}

fn is_bidi_control(c: char) -> bool {
    matches!(
        c,
        '\u{061C}' | '\u{200E}' | '\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}'
    )
}

/// `text` with each character [`needs_display_escape`] picks written as
/// `\u{..}`, as [`char::escape_unicode`] does; borrowed when none is there.
pub fn escape_for_display(text: &str) -> Cow<'_, str> {
    let Some(first) = text.find(needs_display_escape) else {
        return Cow::Borrowed(text);
    };
    let mut shown = String::with_capacity(text.len() + 8);
    shown.push_str(&text[..first]);
    for c in text[first..].chars() {
        if needs_display_escape(c) {
            shown.extend(c.escape_unicode());
        } else {
            shown.push(c);
        }
    }
    Cow::Owned(shown)
}

#[cfg(test)]
mod tests {
    use unicode_security::GeneralSecurityProfile;
    use unicode_security::general_security_profile::IdentifierType;

    use super::*;

    #[test]
    fn names_in_any_script_are_accepted() {
        for name in ["alice", "zoë_42", "Ölçü", "山田", "user-1", "Добрый", "a.b", "😀"]
        {
            assert_eq!(validate_name(name), Ok(()), "{name}");
        }
        assert_eq!(validate_name(&"é".repeat(32)), Ok(()));
    }

    #[test]
    fn empty_long_whitespace_and_control_names_are_refused() {
        assert_eq!(validate_name(""), Err(NameError::Empty));
        assert_eq!(validate_name(&"a".repeat(33)), Err(NameError::TooLong { max: 32 }));
        for name in ["a b", "a\tb", "a\u{3000}b", "a\u{2028}b", "a\u{85}b", "a\u{A0}b"] {
            assert_eq!(validate_name(name), Err(NameError::Whitespace), "{name:?}");
        }
        for name in ["a\u{1b}[31m", "a\u{0}", "a\u{7f}", "\u{9b}31m"] {
            assert_eq!(validate_name(name), Err(NameError::Control), "{name:?}");
        }
    }

    #[test]
    fn invisible_and_blank_characters_are_refused() {
        let invisible = [
            '\u{AD}',    // soft hyphen
            '\u{34F}',   // combining grapheme joiner
            '\u{61C}',   // Arabic letter mark
            '\u{180E}',  // Mongolian vowel separator
            '\u{200B}',  // zero width space
            '\u{200C}',  // ZWNJ
            '\u{200D}',  // ZWJ
            '\u{200E}',  // left-to-right mark
            '\u{202E}',  // right-to-left override
            '\u{2060}',  // word joiner
            '\u{2066}',  // left-to-right isolate
            '\u{206A}',  // deprecated: inhibit symmetric swapping
            '\u{FE0F}',  // variation selector 16
            '\u{FEFF}',  // byte order mark
            '\u{E0001}', // language tag
            '\u{E0041}', // tag latin capital letter a
            '\u{E0100}', // variation selector 17
            '\u{E0FFF}', // unassigned, default-ignorable all the same
        ];
        for c in invisible.into_iter().chain(BLANK_FILLERS) {
            assert_eq!(validate_name(&format!("a{c}b")), Err(NameError::Invisible), "{c:?}");
            assert_eq!(validate_name(&c.to_string()), Err(NameError::Invisible), "{c:?}");
        }
    }

    #[test]
    fn every_default_ignorable_identifier_type_is_refused() {
        let ignorable = (0..=0x10_FFFF)
            .filter_map(char::from_u32)
            .filter(|c| c.identifier_type() == Some(IdentifierType::Default_Ignorable));
        let mut count = 0;
        for c in ignorable {
            assert_eq!(validate_name(&format!("a{c}")), Err(NameError::Invisible), "{c:?}");
            count += 1;
        }
        assert!(count > 300, "only {count}");
    }

    #[test]
    fn the_guest_mark_and_its_look_alikes_are_refused() {
        for name in ["~bob", "bob~", "b~b", "\u{FF5E}bob", "\u{2053}bob"] {
            assert_eq!(validate_name(name), Err(NameError::GuestMark), "{name}");
        }
        // Tildes the look-alike key keeps apart may not come first either.
        for name in ["\u{02DC}bob", "\u{1FC0}bob", "\u{02F7}bob", "\u{3030}bob", "\u{0303}bob"] {
            assert_eq!(validate_name(name), Err(NameError::GuestMark), "{name}");
        }
        assert_eq!(validate_name("se\u{00F1}or"), Ok(()));
        assert_eq!(validate_name("sen\u{0303}or"), Ok(()));
    }

    #[test]
    fn look_alikes_of_alice_have_its_key() {
        assert_eq!(name_key("alice"), "alice");
        for name in ["Alice", "ALICE", "\u{430}lice", "ａｌｉｃｅ", "ＡＬＩＣＥ"] {
            assert_eq!(name_key(name), "alice", "{name}");
        }
        // An accent is not a look-alike.
        assert_ne!(name_key("zoë"), name_key("zoe"));
        assert_eq!(name_key("p\u{430}yp\u{430}l"), name_key("paypal"));
        assert_eq!(name_key("rn"), name_key("m"));
        assert_eq!(name_key("1"), name_key("l"));
        assert_eq!(name_key("|"), name_key("l"));
        assert_ne!(name_key("bob"), name_key("bab"));
        assert_eq!(name_key("b0b"), name_key("bob"));
    }

    #[test]
    fn format_characters_are_refused_even_when_not_default_ignorable() {
        for c in ['\u{600}', '\u{605}', '\u{6DD}', '\u{70F}', '\u{8E2}', '\u{FFF9}', '\u{110BD}'] {
            assert_eq!(validate_name(&format!("alice{c}")), Err(NameError::Invisible), "{c:?}");
        }
    }

    #[test]
    fn look_alikes_the_key_does_not_catch() {
        // Lowercased before the skeleton: `I` becomes `i`, never `l`.
        assert_ne!(name_key("I"), name_key("l"));
        // Lowercasing is not full case folding.
        assert_ne!(name_key("Straße"), name_key("strasse"));
    }

    #[test]
    fn display_escaping_picks_controls_bidi_and_line_breaks_only() {
        let escaped = [
            '\u{0}', '\n', '\r', '\u{1b}', '\u{7f}', '\u{85}', '\u{9b}', '\u{61C}', '\u{200E}',
            '\u{200F}', '\u{202A}', '\u{202E}', '\u{2066}', '\u{2069}', '\u{2028}', '\u{2029}',
        ];
        for c in escaped {
            assert!(needs_display_escape(c), "{c:?}");
        }
        let kept = [
            '\t',
            'a',
            ' ',
            'é',
            '\u{301}',
            '\u{200B}',
            '\u{200C}',
            '\u{200D}',
            '\u{FE0F}',
            '\u{E0100}',
            '😀',
            '山',
        ];
        for c in kept {
            assert!(!needs_display_escape(c), "{c:?}");
        }
    }

    #[test]
    fn escaping_writes_unicode_escapes_and_borrows_clean_text() {
        assert!(matches!(escape_for_display("👨\u{200D}👩\u{200D}👧 ok"), Cow::Borrowed(_)));
        assert_eq!(escape_for_display("\x1b[31mred\u{202E}x"), "\\u{1b}[31mred\\u{202e}x");
        assert_eq!(escape_for_display("é\u{2028}"), "é\\u{2028}");
    }
}
