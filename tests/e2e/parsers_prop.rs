//! Property tests for every parser the project owns: whatever the input, no
//! panic, and what is accepted obeys the rules.

use std::borrow::Cow;

use chat::client::sanitize;
use chat::protocol::names::{escape_for_display, name_key, needs_display_escape};
use chat::protocol::{
    Command, Event, MAX_NAME_CHARS, Request, now, parse_command, parse_welcome, query_param,
    room_from_path, validate_name,
};
use proptest::prelude::*;

/// Characters the Unicode rules care about, mixed with plain and random ones,
/// so that generated names are sometimes accepted.
fn tricky_char() -> impl Strategy<Value = char> {
    let tricky = vec![
        '\t',
        '\n',
        '\u{1b}',
        '\u{7f}',
        '\u{85}',
        '\u{9b}',
        '\u{a0}',
        '\u{ad}',
        '\u{61c}',
        '\u{115f}',
        '\u{200b}',
        '\u{200c}',
        '\u{200d}',
        '\u{200e}',
        '\u{202e}',
        '\u{2028}',
        '\u{2066}',
        '\u{2800}',
        '\u{3164}',
        '\u{fe0f}',
        '\u{feff}',
        '\u{ffa0}',
        '\u{e0041}',
        '\u{430}',
        'é',
        '\u{301}',
        '山',
        '😀',
        'ａ',
    ];
    prop_oneof![3 => prop::char::range('a', 'z'), 1 => prop::sample::select(tricky), 1 => any::<char>()]
}

fn tricky_string(max: usize) -> impl Strategy<Value = String> {
    prop::collection::vec(tricky_char(), 0..max).prop_map(String::from_iter)
}

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
    fn accepted_names_obey_the_rules(name in prop_oneof![any::<String>(), tricky_string(40)]) {
        if validate_name(&name).is_ok() {
            let chars = name.chars().count();
            prop_assert!((1..=MAX_NAME_CHARS).contains(&chars));
            prop_assert!(!name.chars().any(|c| c.is_whitespace() || c.is_control()));
            prop_assert!(!name_key(&name).is_empty());
        }
    }

    #[test]
    fn accepted_names_are_display_safe(name in prop_oneof![any::<String>(), tricky_string(40)]) {
        if validate_name(&name).is_ok() {
            prop_assert!(!name.chars().any(needs_display_escape));
            prop_assert_eq!(escape_for_display(&name), Cow::Borrowed(name.as_str()));
        }
    }

    #[test]
    fn name_keys_ignore_ascii_case(name in "[a-zA-Z]{1,32}") {
        prop_assert_eq!(name_key(&name), name_key(&name.to_uppercase()));
        prop_assert_eq!(name_key(&name), name_key(&name.to_lowercase()));
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
    fn escaped_text_needs_no_more_escaping_and_plain_text_is_kept(
        text in prop_oneof![any::<String>(), tricky_string(60)],
    ) {
        let shown = escape_for_display(&text);
        prop_assert!(!shown.chars().any(needs_display_escape));
        if !text.chars().any(needs_display_escape) {
            prop_assert!(matches!(shown, Cow::Borrowed(_)));
            prop_assert_eq!(&shown, &text);
        }
        prop_assert_eq!(sanitize(&text), shown.into_owned());
    }
}

proptest! {
    // Whatever a peer puts in X-Forwarded-For, the client is the peer or one
    // of the addresses written there, and never a trusted proxy unless all are.
    #[test]
    fn forwarded_for_never_panics_and_names_a_written_address(
        values in prop::collection::vec(prop_oneof![
            any::<String>(),
            prop::collection::vec(prop_oneof![
                Just("10.0.0.1".to_owned()),
                Just("[2001:db8::1]:443".to_owned()),
                Just("203.0.113.5".to_owned()),
                Just(" 198.51.100.1:80".to_owned()),
                any::<String>(),
            ], 0..5).prop_map(|entries| entries.join(",")),
        ], 0..4),
        raw in prop::collection::vec(any::<u8>(), 0..64),
    ) {
        use std::net::IpAddr;
        let proxies = vec![chat::server::parse_proxy("10.0.0.0/8").expect("a network")];
        let peer: IpAddr = "10.9.9.9".parse().expect("an address");
        let mut all: Vec<&[u8]> = values.iter().map(String::as_bytes).collect();
        all.push(&raw);
        let client = chat::server::client_address(peer, &proxies, all.iter().copied());
        let text = values.join(",");
        let (shown, bracketed) = (client.to_string(), format!("[{client}]"));
        let written = client == peer
            || text.contains(&shown)
            || text.contains(&bracketed)
            || String::from_utf8_lossy(&raw).contains(&shown);
        prop_assert!(written, "{} is not in {:?}", shown, text);
        let _ = chat::server::AddressKey::of(client).to_string();
        let _ = chat::server::parse_proxy(&text);
    }

    // Any Origin, Host or --public-url text: an answer, never a panic; and
    // the loopback names on the bound port are always the server's own.
    #[test]
    fn origins_and_hosts_never_panic(origin in any::<String>(), host in any::<String>(), port in 1u16..) {
        let bound = std::net::SocketAddr::from(([127, 0, 0, 1], port));
        let public: Vec<chat::server::PublicUrl> = origin.parse().ok().into_iter().collect();
        let own = chat::server::OwnOrigins::new(bound, false, public);
        let _ = own.is_own_origin(&origin, Some(&host));
        let _ = own.is_own_host(Some(&host));
        let (origin_own, host_own) = (format!("http://localhost:{port}"), format!("[::1]:{port}"));
        prop_assert!(own.is_own_origin(&origin_own, Some(&host)));
        prop_assert!(own.is_own_host(Some(&host_own)));
        let wildcard = chat::server::OwnOrigins::new(std::net::SocketAddr::from(([0, 0, 0, 0], port)), true, Vec::new());
        let _ = wildcard.is_own_origin(&origin, Some(&host));
    }
}
