//! Arbitrary bytes into the parsers never panic; reply text round-trips through CDATA.

use proptest::prelude::*;
use wxhub_message::{Header, Message, Reply, parse, parse_envelope, parse_message};

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1024))]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let _ = parse_envelope(&bytes, &Default::default());
        if let Ok(s) = std::str::from_utf8(&bytes) {
            let _ = parse(s);
        }
    }

    #[test]
    fn xmlish_strings_never_panic(s in "(<[a-zA-Z]{1,6}>|</[a-zA-Z]{1,6}>|<!\\[CDATA\\[|\\]\\]>|&[a-z#0-9]{0,5};?|[a-z0-9 <>&]){0,60}") {
        let _ = parse(&s);
        let _ = parse_envelope(s.as_bytes(), &Default::default());
    }

    #[test]
    fn reply_text_round_trips(content in "\\PC{0,200}") {
        // XML cannot carry most control characters; WeChat text never contains them.
        let header = Header {
            to_user_name: "gh".into(),
            from_user_name: "o".into(),
            create_time: 1,
            msg_type: "text".into(),
            agent_id: None,
            digest: 0,
        };
        let xml = Reply::text(&header, 2, content.clone()).to_xml();
        let Message::Text(t) = parse_message(&xml).unwrap() else { panic!() };
        // XML 1.0 end-of-line normalization turns \r\n and \r into \n.
        prop_assert_eq!(t.content, content.replace("\r\n", "\n").replace('\r', "\n"));
    }
}
