//! Property tests for every parser the project owns: whatever the input, no
//! panic, and what is accepted obeys the rules.

use chat::client::sanitize;
use chat::protocol::{
    Command, Event, MAX_NAME_CHARS, Request, now, parse_command, parse_welcome, query_param,
    room_from_path, validate_name,
};
use proptest::prelude::*;

proptest! {
    #[test]
    fn commands_never_panic_and_plain_text_is_said_verbatim(text in any::<String>()) {
        let command = parse_command(&text);
        if !text.starts_with('/') {
            prop_assert_eq!(command, Command::Say(&text));
        }
        if let Some(rest) = text.strip_prefix("//") {
            prop_assert_eq!(command, Command::Say(&text[1..]));
            prop_assert!(text[1..].starts_with('/') && text[1..].ends_with(rest));
        }
        if let Command::Nick(name) = command {
            prop_assert!(!name.is_empty() && name.trim() == name);
        }
    }

    #[test]
    fn accepted_names_obey_the_rules(name in any::<String>()) {
        if validate_name(&name).is_ok() {
            let chars = name.chars().count();
            prop_assert!((1..=MAX_NAME_CHARS).contains(&chars));
            prop_assert!(!name.chars().any(|c| c.is_whitespace() || c.is_control()));
            prop_assert!(!name.chars().any(chat::protocol::is_invisible_format));
        }
    }

    #[test]
    fn rooms_are_plain_ascii(path in any::<String>()) {
        if let Ok(room) = room_from_path(&path) {
            prop_assert!(!room.is_empty() && room.len() <= 32);
            prop_assert!(room.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)));
        }
    }

    #[test]
    fn query_strings_never_panic_and_round_trip(value in any::<String>(), junk in any::<String>()) {
        let _ = query_param(Some(&junk), "name");
        let encoded: String = form_urlencoded::Serializer::new(String::new()).append_pair("name", &value).finish();
        let query = format!("x=1&{encoded}");
        prop_assert_eq!(query_param(Some(&query), "name"), Some(value));
    }

    #[test]
    fn json_requests_never_panic_and_any_text_round_trips(junk in any::<String>(), text in any::<String>()) {
        let _ = serde_json::from_str::<Request<'_>>(&junk);
        let request = Request::Message { text: text.as_str().into(), id: None };
        let json = serde_json::to_string(&request).expect("encodes");
        let decoded: Request<'_> = serde_json::from_str(&json).expect("decodes");
        prop_assert_eq!(decoded.command(), Command::Say(&text));
    }

    #[test]
    fn any_event_round_trips_through_json(from in any::<String>(), text in any::<String>(), seq in any::<u64>()) {
        let event = Event::Message { room: "r".into(), seq, from: from.into(), text: text.into(), ts: now() };
        let json = serde_json::to_string(&event).expect("encodes");
        prop_assert_eq!(serde_json::from_str::<Event<'_>>(&json).expect("decodes"), event.clone());
        prop_assert!(!json.contains('\n'));
        let _ = parse_welcome(&event.to_string());
    }

    #[test]
    fn sanitized_text_holds_no_control_characters(text in any::<String>()) {
        let safe = sanitize(&text);
        prop_assert!(!safe.chars().any(|c| (c.is_control() && c != '\t') || chat::protocol::is_invisible_format(c)));
        if !text.chars().any(|c| (c.is_control() && c != '\t') || chat::protocol::is_invisible_format(c)) {
            prop_assert_eq!(safe, text);
        }
    }
}
