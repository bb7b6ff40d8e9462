//! What the router reads of a call (pure): the method, and from the request's protobuf bytes
//! only the fields that route it (the player id, the shard, the read consistency). The bytes
//! themselves are forwarded untouched, because operator signatures cover them.
//!
//! Field numbers are the proto's (`proto/casino/wallet/v1/wallet.proto`); protobuf promises
//! they never change meaning, so reading them here does not tie the router to one build of
//! the API.

/// How a call is routed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call {
    /// Whether it changes money (needs the leader, and is idempotent by its key).
    pub mutation: bool,
    /// Whether the response is a stream (never buffered, never retried once it started).
    pub streaming: bool,
    /// The player whose shard it concerns, if the request names one.
    pub player: Option<String>,
    /// The shard it concerns, when it names a shard rather than a player.
    pub shard: Option<u32>,
    /// Whether a bounded-stale read is acceptable (only `GetBalance` with `STALE`).
    pub stale_ok: bool,
}

/// The wallet service's methods, by path suffix: (name, mutation, streaming).
const METHODS: &[(&str, bool, bool)] = &[
    ("OpenWallet", true, false),
    ("Deposit", true, false),
    ("ReserveWithdrawal", true, false),
    ("CommitWithdrawal", true, false),
    ("CancelWithdrawal", true, false),
    ("PlaceBet", true, false),
    ("SettleWin", true, false),
    ("RollbackBet", true, false),
    ("Transfer", true, false),
    ("GetBalance", false, false),
    ("ListEntries", false, false),
    ("WatchEntries", false, true),
    ("GetEntryProof", false, false),
    ("PlaceBets", true, false),
    ("SettleWins", true, false),
];

/// `READ_CONSISTENCY_STALE` in the proto.
const READ_CONSISTENCY_STALE: u64 = 2;

/// Classifies a call to `/casino.wallet.v1.Wallet/<method>` with request `message` (the
/// protobuf bytes, without the gRPC frame header). `None` for a method the wallet does not
/// have, or a message that is not protobuf: the router then lets a node answer it.
pub fn classify(method: &str, message: &[u8]) -> Option<Call> {
    let &(name, mutation, streaming) = METHODS.iter().find(|(n, _, _)| *n == method)?;
    let fields = Fields::parse(message)?;
    let mut call = Call { mutation, streaming, player: None, shard: None, stale_ok: false };
    match name {
        // A batch goes where its first item's player lives; the node forwards the others' items
        // to their own leaders.
        "PlaceBets" | "SettleWins" => call.player = fields.first(1).and_then(Fields::parse).and_then(|i| i.string(2)),
        // Mutations name the player (the payer for a transfer) in field 2.
        _ if mutation => call.player = fields.string(2),
        "GetBalance" => {
            call.player = fields.string(1);
            call.stale_ok = fields.varint(3) == Some(READ_CONSISTENCY_STALE);
        }
        "ListEntries" | "WatchEntries" => {
            call.player = fields.string(1).filter(|p| !p.is_empty());
            call.shard = fields.varint(2).and_then(|s| u32::try_from(s).ok());
        }
        "GetEntryProof" => call.shard = fields.varint(1).and_then(|s| u32::try_from(s).ok()),
        _ => {}
    }
    Some(call)
}

/// Splits a gRPC request body into its one message. `None` unless it is exactly one
/// uncompressed frame.
pub fn unframe(body: &[u8]) -> Option<&[u8]> {
    let (&flag, rest) = body.split_first()?;
    let len = u32::from_be_bytes(rest.get(..4)?.try_into().ok()?) as usize;
    (flag == 0 && rest.len() == 4 + len).then(|| &rest[4..])
}

/// The top-level fields of a protobuf message that routing reads: the last value of each
/// length-delimited or varint field (protobuf's "last one wins").
struct Fields<'a> {
    strings: Vec<(u64, &'a [u8])>,
    varints: Vec<(u64, u64)>,
}

impl<'a> Fields<'a> {
    fn parse(mut b: &'a [u8]) -> Option<Self> {
        let mut f = Fields { strings: Vec::new(), varints: Vec::new() };
        while !b.is_empty() {
            let key = varint(&mut b)?;
            let (field, wire) = (key >> 3, key & 7);
            match wire {
                0 => f.varints.push((field, varint(&mut b)?)),
                1 => b = b.get(8..)?,
                2 => {
                    let len = usize::try_from(varint(&mut b)?).ok()?;
                    f.strings.push((field, b.get(..len)?));
                    b = &b[len..];
                }
                5 => b = b.get(4..)?,
                _ => return None,
            }
        }
        Some(f)
    }

    fn string(&self, field: u64) -> Option<String> {
        let bytes = self.strings.iter().rev().find(|(n, _)| *n == field)?.1;
        String::from_utf8(bytes.to_vec()).ok()
    }

    /// The first value of a repeated length-delimited field.
    fn first(&self, field: u64) -> Option<&'a [u8]> {
        self.strings.iter().find(|(n, _)| *n == field).map(|(_, b)| *b)
    }

    fn varint(&self, field: u64) -> Option<u64> {
        self.varints.iter().rev().find(|(n, _)| *n == field).map(|(_, v)| *v)
    }
}

fn varint(b: &mut &[u8]) -> Option<u64> {
    let mut v = 0u64;
    for i in 0..10 {
        let (&byte, rest) = b.split_first()?;
        *b = rest;
        v |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn string_field(n: u8, s: &str) -> Vec<u8> {
        let mut v = vec![(n << 3) | 2, s.len() as u8];
        v.extend_from_slice(s.as_bytes());
        v
    }

    #[test]
    fn mutations_route_by_the_player_in_field_two() {
        // PlaceBetRequest { idempotency_key = 1, player_id = 2, ... }
        let mut msg = string_field(1, "bet-1");
        msg.extend(string_field(2, "eu:alice"));
        msg.extend([(3 << 3), 0x96, 0x01]); // a varint field routing ignores
        let call = classify("PlaceBet", &msg).unwrap();
        assert_eq!(
            call,
            Call { mutation: true, streaming: false, player: Some("eu:alice".into()), shard: None, stale_ok: false }
        );
        let transfer = classify("Transfer", &msg).unwrap();
        assert_eq!(transfer.player.as_deref(), Some("eu:alice"), "the payer routes a transfer");
    }

    #[test]
    fn a_batch_routes_by_its_first_items_player() {
        // PlaceBetsRequest { repeated PlaceBetRequest bets = 1 }
        let item = |key: &str, player: &str| {
            let mut i = string_field(1, key);
            i.extend(string_field(2, player));
            string_field(1, std::str::from_utf8(&i).unwrap())
        };
        let mut msg = item("b-1", "eu:alice");
        msg.extend(item("b-2", "us:bob"));
        for method in ["PlaceBets", "SettleWins"] {
            let call = classify(method, &msg).unwrap();
            assert!(call.mutation && !call.streaming);
            assert_eq!(call.player.as_deref(), Some("eu:alice"), "{method}");
        }
        assert!(classify("PlaceBets", &[]).unwrap().player.is_none(), "an empty batch has no player");
        assert!(
            classify("PlaceBets", &string_field(1, "\u{7}")).unwrap().player.is_none(),
            "an item that is not protobuf"
        );
    }

    #[test]
    fn reads_say_whether_a_stale_answer_will_do() {
        let mut msg = string_field(1, "bob");
        msg.extend(string_field(2, "EUR"));
        assert!(!classify("GetBalance", &msg).unwrap().stale_ok);
        msg.extend([3 << 3, 2]);
        let call = classify("GetBalance", &msg).unwrap();
        assert!(call.stale_ok && !call.mutation);
        assert_eq!(call.player.as_deref(), Some("bob"));
        let watch = classify("WatchEntries", &[2 << 3, 5]).unwrap();
        assert_eq!((watch.player, watch.shard, watch.streaming), (None, Some(5), true));
        assert_eq!(classify("GetEntryProof", &[1 << 3, 3]).unwrap().shard, Some(3));
    }

    #[test]
    fn unknown_methods_and_garbage_are_left_to_a_node() {
        assert_eq!(classify("Steal", &[]), None);
        assert_eq!(classify("PlaceBet", &[0x12, 50, 1]), None, "a length past the end");
        assert_eq!(classify("PlaceBet", &[0x0f]), None, "wire type 7");
        assert!(classify("PlaceBet", &[]).unwrap().player.is_none(), "an empty message has no player");
    }

    #[test]
    fn a_body_is_one_uncompressed_frame() {
        assert_eq!(unframe(&[0, 0, 0, 0, 2, 7, 8]), Some(&[7u8, 8][..]));
        assert_eq!(unframe(&[1, 0, 0, 0, 2, 7, 8]), None, "compressed");
        assert_eq!(unframe(&[0, 0, 0, 0, 3, 7, 8]), None, "short");
        assert_eq!(unframe(&[0, 0, 0]), None);
    }
}
