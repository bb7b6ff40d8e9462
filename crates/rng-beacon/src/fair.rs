//! Provably-fair outcomes: the HMAC-SHA256 byte stream and the game mappers.
//!
//! This module is pure: an outcome is a function of (server seed, client seed, nonce, game,
//! mode) and nothing else, which is what lets a player or a regulator recompute it.
//!
//! The byte stream is the scheme players already know:
//! `HMAC-SHA256(key = server_seed as UTF-8, msg = "{client_seed}:{nonce}:{round}")` for
//! `round = 0, 1, ...`, consumed in order, four bytes at a time as a big-endian `u32`.
//!
//! Two ways of turning a word `x` into a number in `0..n`:
//! - **stake**: `floor(x / 2^32 * n)`, the widely used float mapping, computed as
//!   `(x * n) >> 32`. That is exact, not an approximation: `x / 2^32` is exact in an f64 and
//!   `x * n < 2^53`, so the float product never rounds. It is slightly biased whenever `n` does
//!   not divide 2^32 (about 1e-8 for roulette).
//! - **unbiased**: rejection sampling. Let `limit = n * floor(2^32 / n)`; a word `x < limit`
//!   yields `x mod n`, and a word `x >= limit` is discarded and the next word is read. Every value
//!   of `0..n` then has exactly `floor(2^32 / n)` preimages, so the result is exactly uniform.
//!   A word is discarded with probability below `n / 2^32`.

use hmac::{Hmac, KeyInit, Mac};
use serde_json::Value;
use sha2::{Digest, Sha256};

/// The longest client or server seed accepted, in bytes.
pub const SEED_LEN_MAX: usize = 256;

/// Why an outcome could not be drawn.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FairError {
    #[error("{which} seed is empty")]
    EmptySeed { which: &'static str },
    #[error("{which} seed is {len} bytes; the limit is {SEED_LEN_MAX}")]
    OversizedSeed { which: &'static str, len: usize },
    #[error("{which} seed contains a control character at byte {at}")]
    MalformedSeed { which: &'static str, at: usize },
    #[error(
        "unknown game {0:?}; expected float, dice, roulette, cards[:N], keno, mines[:N], plinko[:N], limbo or shuffle"
    )]
    UnknownGame(String),
    #[error("game {game}: {why}")]
    BadGameParameter { game: &'static str, why: String },
    #[error("unknown mode {0:?}; expected stake or unbiased")]
    UnknownMode(String),
}

/// Checks a seed: 1 to [`SEED_LEN_MAX`] bytes with no control characters (which would make the
/// `client:nonce:round` message ambiguous to display and to type).
pub fn check_seed(which: &'static str, seed: &str) -> Result<(), FairError> {
    if seed.is_empty() {
        return Err(FairError::EmptySeed { which });
    }
    if seed.len() > SEED_LEN_MAX {
        return Err(FairError::OversizedSeed { which, len: seed.len() });
    }
    if let Some((at, _)) = seed.char_indices().find(|(_, c)| c.is_control()) {
        return Err(FairError::MalformedSeed { which, at });
    }
    Ok(())
}

/// `sha256(server_seed as UTF-8)`: what the player sees before playing.
pub fn commitment(server_seed: &str) -> [u8; 32] {
    Sha256::digest(server_seed.as_bytes()).into()
}

/// How words become numbers in a range. See the module documentation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    /// Byte-compatible with the widely used float mapping.
    Stake,
    /// Rejection sampling; exactly uniform. The default, for regulated markets.
    #[default]
    Unbiased,
}

impl Mode {
    pub fn parse(s: &str) -> Result<Self, FairError> {
        match s {
            "stake" => Ok(Mode::Stake),
            "unbiased" | "" => Ok(Mode::Unbiased),
            other => Err(FairError::UnknownMode(other.to_owned())),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Mode::Stake => "stake",
            Mode::Unbiased => "unbiased",
        }
    }
}

/// A game and its parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Game {
    /// One float in `[0, 1)`: `x / 2^32`.
    Float,
    /// `floor(f * 10001) / 100`: 0.00 to 100.00.
    Dice,
    /// A pocket, 0 to 36.
    Roulette,
    /// `count` cards from an infinite 52-card deck (with replacement), as Hilo and blackjack
    /// draw them. Deck order: 2♦ 2♥ 2♠ 2♣ 3♦ ... A♣.
    Cards { count: u8 },
    /// 10 numbers from 1..=40 without replacement: draw `i` takes index
    /// `uniform(40 - i)` of the numbers not yet drawn, in ascending order.
    Keno,
    /// `mines` mine positions on a 5x5 board (tiles 0..25), drawn without replacement as keno is.
    Mines { mines: u8 },
    /// A ball falling through `rows` rows: each row goes right with `uniform(2) == 1`. The
    /// outcome is the bucket, the number of rights (0..=rows).
    Plinko { rows: u8 },
    /// A multiplier with `P(m >= t) = 0.99 / t`, in hundredths, at least 1.00, capped at 1e6.
    Limbo,
    /// A full 52-card shuffle, drawn without replacement as keno is.
    Shuffle,
}

const KENO_POOL: u32 = 40;
const KENO_DRAWS: usize = 10;
const MINES_TILES: u32 = 25;
const DECK: u32 = 52;
/// Limbo's cap, in hundredths: 1,000,000.00x.
const LIMBO_HUNDREDTHS_MAX: u64 = 100_000_000;

impl Game {
    /// Parses `name` or `name:param`.
    pub fn parse(spec: &str) -> Result<Self, FairError> {
        let (name, param) = match spec.split_once(':') {
            Some((n, p)) => (n, Some(p)),
            None => (spec, None),
        };
        let num = |game: &'static str, default: u8, lo: u8, hi: u8| -> Result<u8, FairError> {
            let Some(p) = param else { return Ok(default) };
            let bad = || FairError::BadGameParameter { game, why: format!("{p:?} is not a number in {lo}..={hi}") };
            let v: u8 = p.parse().map_err(|_| bad())?;
            if (lo..=hi).contains(&v) { Ok(v) } else { Err(bad()) }
        };
        let plain = |g: Game| -> Result<Game, FairError> {
            match param {
                None => Ok(g),
                Some(p) => {
                    Err(FairError::BadGameParameter { game: g.name(), why: format!("takes no parameter, got {p:?}") })
                }
            }
        };
        match name {
            "float" => plain(Game::Float),
            "dice" => plain(Game::Dice),
            "roulette" => plain(Game::Roulette),
            "keno" => plain(Game::Keno),
            "limbo" => plain(Game::Limbo),
            "shuffle" => plain(Game::Shuffle),
            "cards" => Ok(Game::Cards { count: num("cards", 1, 1, 52)? }),
            "mines" => Ok(Game::Mines { mines: num("mines", 3, 1, 24)? }),
            "plinko" => Ok(Game::Plinko { rows: num("plinko", 16, 8, 16)? }),
            _ => Err(FairError::UnknownGame(spec.to_owned())),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Game::Float => "float",
            Game::Dice => "dice",
            Game::Roulette => "roulette",
            Game::Cards { .. } => "cards",
            Game::Keno => "keno",
            Game::Mines { .. } => "mines",
            Game::Plinko { .. } => "plinko",
            Game::Limbo => "limbo",
            Game::Shuffle => "shuffle",
        }
    }

    /// The canonical spec, which [`Game::parse`] reads back.
    pub fn spec(self) -> String {
        match self {
            Game::Cards { count } => format!("cards:{count}"),
            Game::Mines { mines } => format!("mines:{mines}"),
            Game::Plinko { rows } => format!("plinko:{rows}"),
            g => g.name().to_owned(),
        }
    }
}

/// A source of 32-bit words. The production source is [`OutcomeStream`]; tests feed crafted
/// words to exercise rejection.
pub trait Words {
    fn next_word(&mut self) -> u32;
}

/// A server seed with its HMAC key schedule done once, so each draw costs two SHA-256
/// compressions rather than four.
#[derive(Clone)]
pub struct KeyedSeed {
    mac: Hmac<Sha256>,
}

impl KeyedSeed {
    pub fn new(server_seed: &str) -> Self {
        // HMAC accepts keys of any length, so this cannot fail.
        let mac = <Hmac<Sha256> as KeyInit>::new_from_slice(server_seed.as_bytes()).expect("HMAC takes any key length");
        KeyedSeed { mac }
    }

    /// The byte stream of one bet.
    pub fn stream<'a>(&'a self, client_seed: &'a str, nonce: u64) -> OutcomeStream<'a> {
        OutcomeStream { seed: self, client_seed, nonce, round: 0, block: [0; 32], used: 32 }
    }

    /// `HMAC-SHA256(server_seed, "{client_seed}:{nonce}:{round}")`.
    pub fn block(&self, client_seed: &str, nonce: u64, round: u64) -> [u8; 32] {
        let mut mac = self.mac.clone();
        mac.update(client_seed.as_bytes());
        mac.update(b":");
        mac.update(decimal(nonce, &mut [0; 20]));
        mac.update(b":");
        mac.update(decimal(round, &mut [0; 20]));
        mac.finalize().into_bytes().into()
    }
}

/// Formats `v` in decimal without allocating.
fn decimal(mut v: u64, buf: &mut [u8; 20]) -> &[u8] {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            return &buf[i..];
        }
    }
}

/// The words of one bet, round after round.
pub struct OutcomeStream<'a> {
    seed: &'a KeyedSeed,
    client_seed: &'a str,
    nonce: u64,
    round: u64,
    block: [u8; 32],
    used: usize,
}

impl Words for OutcomeStream<'_> {
    fn next_word(&mut self) -> u32 {
        if self.used == self.block.len() {
            self.block = self.seed.block(self.client_seed, self.nonce, self.round);
            self.round += 1;
            self.used = 0;
        }
        let w = u32::from_be_bytes(self.block[self.used..self.used + 4].try_into().expect("4 bytes"));
        self.used += 4;
        w
    }
}

/// A number in `0..n` (`n >= 1`) from the stream, in the given mode.
pub fn uniform(words: &mut impl Words, n: u32, mode: Mode) -> u32 {
    debug_assert!(n >= 1);
    match mode {
        Mode::Stake => ((u64::from(words.next_word()) * u64::from(n)) >> 32) as u32,
        Mode::Unbiased => {
            let n64 = u64::from(n);
            let limit = (1u64 << 32) / n64 * n64;
            loop {
                let x = u64::from(words.next_word());
                if x < limit {
                    return (x % n64) as u32;
                }
            }
        }
    }
}

/// A card, as an index into the deck order 2♦ 2♥ 2♠ 2♣ 3♦ ... A♣.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Card(pub u8);

impl Card {
    /// Rank then suit letter, e.g. `10H`, `AS`, `2D`.
    pub fn label(self) -> String {
        const RANKS: [&str; 13] = ["2", "3", "4", "5", "6", "7", "8", "9", "10", "J", "Q", "K", "A"];
        const SUITS: [char; 4] = ['D', 'H', 'S', 'C'];
        format!("{}{}", RANKS[usize::from(self.0 / 4)], SUITS[usize::from(self.0 % 4)])
    }
}

/// A drawn outcome, in exact integers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The raw word; the float is `word / 2^32`.
    Float(u32),
    /// Hundredths: 3882 is 38.82.
    Dice(u32),
    Roulette(u32),
    Cards(Vec<Card>),
    Keno(Vec<u8>),
    Mines(Vec<u8>),
    Plinko {
        bucket: u8,
    },
    /// Hundredths: 199 is 1.99x.
    Limbo(u64),
    Shuffle(Vec<Card>),
}

/// Draws `count` of the values `first..first+pool` without replacement: draw `i` takes index
/// `uniform(pool - i)` of the values not yet drawn, kept in ascending order.
fn without_replacement(words: &mut impl Words, mode: Mode, first: u8, pool: u32, count: usize) -> Vec<u8> {
    let mut left: Vec<u8> = (0..pool).map(|v| first + v as u8).collect();
    let mut out = Vec::with_capacity(count);
    for i in 0..count {
        let idx = uniform(words, pool - i as u32, mode) as usize;
        out.push(left.remove(idx));
    }
    out
}

/// Maps the stream to an outcome of `game`.
pub fn draw(words: &mut impl Words, game: Game, mode: Mode) -> Outcome {
    match game {
        Game::Float => Outcome::Float(words.next_word()),
        Game::Dice => Outcome::Dice(uniform(words, 10_001, mode)),
        Game::Roulette => Outcome::Roulette(uniform(words, 37, mode)),
        Game::Cards { count } => Outcome::Cards((0..count).map(|_| Card(uniform(words, DECK, mode) as u8)).collect()),
        Game::Keno => Outcome::Keno(without_replacement(words, mode, 1, KENO_POOL, KENO_DRAWS)),
        Game::Mines { mines } => Outcome::Mines(without_replacement(words, mode, 0, MINES_TILES, usize::from(mines))),
        Game::Plinko { rows } => {
            let bucket = (0..rows).map(|_| uniform(words, 2, mode) as u8).sum();
            Outcome::Plinko { bucket }
        }
        Game::Limbo => Outcome::Limbo(limbo(words.next_word(), mode)),
        Game::Shuffle => {
            Outcome::Shuffle(without_replacement(words, mode, 0, DECK, DECK as usize).into_iter().map(Card).collect())
        }
    }
}

/// Limbo's multiplier in hundredths from one word.
///
/// stake: `max(1, floor(1e8 / (f * 1e8) * 0.99 * 100) / 100)`, evaluated in f64 exactly as the
/// widely used JavaScript does, so results match it bit for bit.
/// unbiased: the same curve in exact integers, `floor(99 * 2^32 / x)` hundredths. There is no
/// range reduction here, so nothing to reject; integer arithmetic only removes float rounding.
#[allow(clippy::float_arithmetic)] // stake compatibility requires reproducing the f64 formula
fn limbo(word: u32, mode: Mode) -> u64 {
    let hundredths = match mode {
        Mode::Stake => {
            let f = f64::from(word) / 4_294_967_296.0;
            let point = 1e8 / (f * 1e8) * 0.99;
            let h = (point * 100.0).floor();
            // Saturating float-to-int: infinity (word 0) becomes u64::MAX, then the cap applies.
            h as u64
        }
        Mode::Unbiased => match word {
            0 => u64::MAX,
            w => (99u64 << 32) / u64::from(w),
        },
    };
    hundredths.clamp(100, LIMBO_HUNDREDTHS_MAX)
}

/// Integer hundredths as an exact JSON number, e.g. 3882 -> 38.82.
fn hundredths_json(h: u64) -> Value {
    let text = format!("{}.{:02}", h / 100, h % 100);
    serde_json::from_str(&text).expect("a decimal literal is valid JSON")
}

impl Outcome {
    /// The outcome as players see it: a number for float, dice, roulette, limbo and plinko, an
    /// array for the rest. Cards are labels such as `"QH"`.
    pub fn to_json(&self) -> Value {
        match self {
            Outcome::Float(w) => Value::from(word_to_float(*w)),
            Outcome::Dice(h) => hundredths_json(u64::from(*h)),
            Outcome::Roulette(v) => Value::from(*v),
            Outcome::Cards(cs) | Outcome::Shuffle(cs) => Value::from(cs.iter().map(|c| c.label()).collect::<Vec<_>>()),
            Outcome::Keno(v) | Outcome::Mines(v) => Value::from(v.clone()),
            Outcome::Plinko { bucket } => Value::from(*bucket),
            Outcome::Limbo(h) => hundredths_json(*h),
        }
    }
}

/// `word / 2^32`, exact in an f64 (a power-of-two scale of a 32-bit integer).
#[allow(clippy::float_arithmetic)]
pub fn word_to_float(word: u32) -> f64 {
    f64::from(word) / 4_294_967_296.0
}

/// Recomputes one bet from its inputs; what `rng-beacon outcome` and the log verifier run.
pub fn outcome(server_seed: &str, client_seed: &str, nonce: u64, game: Game, mode: Mode) -> Result<Outcome, FairError> {
    check_seed("server", server_seed)?;
    check_seed("client", client_seed)?;
    let keyed = KeyedSeed::new(server_seed);
    Ok(draw(&mut keyed.stream(client_seed, nonce), game, mode))
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fixed(Vec<u32>, usize);
    impl Words for Fixed {
        fn next_word(&mut self) -> u32 {
            self.1 += 1;
            self.0[self.1 - 1]
        }
    }

    #[test]
    fn unbiased_rejects_words_above_the_last_whole_multiple() {
        // For n = 37, limit = 37 * floor(2^32 / 37) = 4294967291; words 4294967291.. are rejected.
        let limit = (1u64 << 32) / 37 * 37;
        let mut w = Fixed(vec![u32::MAX, limit as u32, (limit - 1) as u32], 0);
        assert_eq!(uniform(&mut w, 37, Mode::Unbiased), ((limit - 1) % 37) as u32);
        assert_eq!(w.1, 3, "two words rejected, the third accepted");
        // Stake mode uses every word, including the ones unbiased mode rejects.
        let mut w = Fixed(vec![u32::MAX], 0);
        assert_eq!(uniform(&mut w, 37, Mode::Stake), 36);
    }

    #[test]
    fn a_power_of_two_range_never_rejects() {
        let mut w = Fixed(vec![u32::MAX, 0], 0);
        assert_eq!(uniform(&mut w, 2, Mode::Unbiased), 1);
        assert_eq!(w.1, 1);
    }

    #[test]
    fn game_specs_round_trip_and_bad_ones_are_refused() {
        for spec in ["float", "dice", "roulette", "keno", "limbo", "shuffle", "cards:5", "mines:24", "plinko:8"] {
            assert_eq!(Game::parse(spec).unwrap().spec(), spec);
        }
        assert_eq!(Game::parse("mines").unwrap(), Game::Mines { mines: 3 });
        assert!(matches!(Game::parse("craps"), Err(FairError::UnknownGame(_))));
        assert!(matches!(Game::parse("mines:25"), Err(FairError::BadGameParameter { .. })));
        assert!(matches!(Game::parse("plinko:7"), Err(FairError::BadGameParameter { .. })));
        assert!(matches!(Game::parse("dice:2"), Err(FairError::BadGameParameter { .. })));
        assert!(matches!(Mode::parse("fair"), Err(FairError::UnknownMode(_))));
    }

    #[test]
    fn seeds_are_checked() {
        assert_eq!(check_seed("client", ""), Err(FairError::EmptySeed { which: "client" }));
        let big = "x".repeat(SEED_LEN_MAX + 1);
        assert!(matches!(check_seed("client", &big), Err(FairError::OversizedSeed { len: 257, .. })));
        assert!(matches!(check_seed("server", "ab\ncd"), Err(FairError::MalformedSeed { at: 2, .. })));
        assert!(check_seed("client", &"x".repeat(SEED_LEN_MAX)).is_ok());
    }

    #[test]
    fn limbo_matches_between_modes_away_from_rounding_and_is_clamped() {
        assert_eq!(limbo(0, Mode::Stake), LIMBO_HUNDREDTHS_MAX);
        assert_eq!(limbo(0, Mode::Unbiased), LIMBO_HUNDREDTHS_MAX);
        assert_eq!(limbo(u32::MAX, Mode::Stake), 100);
        assert_eq!(limbo(u32::MAX, Mode::Unbiased), 100);
        // f = 0.5 -> 1.98x in both.
        assert_eq!(limbo(1 << 31, Mode::Stake), 198);
        assert_eq!(limbo(1 << 31, Mode::Unbiased), 198);
    }

    #[test]
    fn decimal_formats_extremes() {
        assert_eq!(decimal(0, &mut [0; 20]), b"0");
        assert_eq!(decimal(u64::MAX, &mut [0; 20]), b"18446744073709551615");
    }

    #[test]
    fn shuffle_is_a_permutation_and_mines_are_distinct() {
        let seed = KeyedSeed::new("s");
        let Outcome::Shuffle(cards) = draw(&mut seed.stream("c", 7), Game::Shuffle, Mode::Unbiased) else { panic!() };
        let mut sorted = cards.clone();
        sorted.sort();
        assert_eq!(sorted, (0..52).map(Card).collect::<Vec<_>>());
        let Outcome::Mines(m) = draw(&mut seed.stream("c", 7), Game::Mines { mines: 24 }, Mode::Stake) else {
            panic!()
        };
        let mut s = m.clone();
        s.sort();
        s.dedup();
        assert_eq!(s.len(), 24);
        assert!(s.iter().all(|&t| t < 25));
    }
}
