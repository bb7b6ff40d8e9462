//! Chi-square tests of every game in unbiased mode over 10^6 outcomes each.
//!
//! The seed pair is fixed, so each test is deterministic: it either always passes or always
//! fails. The bound is a z-score of 5 on the chi-square statistic (normal approximation,
//! `(chi2 - df) / sqrt(2 df)`), which a correct generator exceeds with probability below 1e-6;
//! a mapping bug (an off-by-one range, a biased shuffle) produces z-scores in the hundreds.

use rng_beacon::fair::{self, Card, Game, KeyedSeed, Mode, Outcome};

const N: u64 = 1_000_000;

fn draws(game: Game, mut each: impl FnMut(Outcome)) {
    let keyed = KeyedSeed::new("statistics fixed server seed");
    for nonce in 0..N {
        each(fair::draw(&mut keyed.stream("statistics client seed", nonce), game, Mode::Unbiased));
    }
}

/// z-score of the chi-square statistic of `observed` against `expected` counts.
#[allow(clippy::float_arithmetic)]
fn chi_square_z(observed: &[u64], expected: &[f64]) -> f64 {
    assert_eq!(observed.len(), expected.len());
    let chi2: f64 = observed.iter().zip(expected).map(|(&o, &e)| (o as f64 - e).powi(2) / e).sum();
    let df = (observed.len() - 1) as f64;
    (chi2 - df) / (2.0 * df).sqrt()
}

#[allow(clippy::float_arithmetic)]
fn assert_uniform(name: &str, counts: &[u64]) {
    let total: u64 = counts.iter().sum();
    let e = total as f64 / counts.len() as f64;
    let z = chi_square_z(counts, &vec![e; counts.len()]);
    assert!(z.abs() < 5.0, "{name}: chi-square z = {z:.2} over {} bins", counts.len());
}

#[test]
fn float_is_uniform_over_100_bins() {
    let mut bins = vec![0u64; 100];
    draws(Game::Float, |o| {
        let Outcome::Float(w) = o else { unreachable!() };
        bins[((u64::from(w) * 100) >> 32) as usize] += 1;
    });
    assert_uniform("float", &bins);
}

#[test]
fn dice_is_uniform_over_10001_values() {
    let mut bins = vec![0u64; 10_001];
    draws(Game::Dice, |o| {
        let Outcome::Dice(h) = o else { unreachable!() };
        bins[h as usize] += 1;
    });
    assert_uniform("dice", &bins);
}

#[test]
fn roulette_is_uniform_over_37_pockets() {
    let mut bins = vec![0u64; 37];
    draws(Game::Roulette, |o| {
        let Outcome::Roulette(p) = o else { unreachable!() };
        bins[p as usize] += 1;
    });
    assert_uniform("roulette", &bins);
}

#[test]
fn cards_are_uniform_over_52() {
    let mut bins = vec![0u64; 52];
    draws(Game::Cards { count: 1 }, |o| {
        let Outcome::Cards(c) = o else { unreachable!() };
        bins[usize::from(c[0].0)] += 1;
    });
    assert_uniform("cards", &bins);
}

#[test]
fn keno_numbers_are_uniform_at_every_draw_position() {
    let mut first = vec![0u64; 40];
    let mut last = vec![0u64; 40];
    let mut all = vec![0u64; 40];
    draws(Game::Keno, |o| {
        let Outcome::Keno(v) = o else { unreachable!() };
        assert_eq!(v.len(), 10);
        first[usize::from(v[0] - 1)] += 1;
        last[usize::from(v[9] - 1)] += 1;
        for n in v {
            all[usize::from(n - 1)] += 1;
        }
    });
    assert_uniform("keno first draw", &first);
    assert_uniform("keno tenth draw", &last);
    assert_uniform("keno all draws", &all);
}

#[test]
fn mines_are_uniform_over_25_tiles() {
    let mut bins = vec![0u64; 25];
    draws(Game::Mines { mines: 3 }, |o| {
        let Outcome::Mines(v) = o else { unreachable!() };
        for t in v {
            bins[usize::from(t)] += 1;
        }
    });
    assert_uniform("mines", &bins);
}

#[test]
#[allow(clippy::float_arithmetic)]
fn plinko_buckets_follow_the_binomial() {
    let rows = 16u32;
    let mut bins = vec![0u64; rows as usize + 1];
    draws(Game::Plinko { rows: 16 }, |o| {
        let Outcome::Plinko { bucket } = o else { unreachable!() };
        bins[usize::from(bucket)] += 1;
    });
    let choose = |n: u32, k: u32| (0..k).fold(1f64, |acc, i| acc * f64::from(n - i) / f64::from(i + 1));
    let expected: Vec<f64> = (0..=rows).map(|k| choose(rows, k) / 65536.0 * N as f64).collect();
    // Merge the outer buckets until each expects at least 5, as chi-square requires.
    let (mut obs, mut exp) = (vec![0u64], vec![0f64]);
    for (o, e) in bins.iter().zip(&expected) {
        let last = exp.len() - 1;
        if exp[last] < 5.0 {
            obs[last] += o;
            exp[last] += e;
        } else {
            obs.push(*o);
            exp.push(*e);
        }
    }
    let z = chi_square_z(&obs, &exp);
    assert!(z.abs() < 5.0, "plinko: chi-square z = {z:.2}");
}

#[test]
#[allow(clippy::float_arithmetic)]
fn limbo_has_a_099_over_m_tail() {
    // P(m >= t) = 0.99 / t for t > 1; bins between these thresholds.
    let thresholds = [1.01f64, 1.5, 2.0, 3.0, 5.0, 10.0, 100.0];
    let mut obs = vec![0u64; thresholds.len() + 1];
    draws(Game::Limbo, |o| {
        let Outcome::Limbo(h) = o else { unreachable!() };
        let m = h as f64 / 100.0;
        obs[thresholds.iter().filter(|&&t| m >= t).count()] += 1;
    });
    let tail = |t: f64| 0.99 / t;
    let mut exp = vec![(1.0 - tail(thresholds[0])) * N as f64];
    for w in thresholds.windows(2) {
        exp.push((tail(w[0]) - tail(w[1])) * N as f64);
    }
    exp.push(tail(thresholds[thresholds.len() - 1]) * N as f64);
    let z = chi_square_z(&obs, &exp);
    assert!(z.abs() < 5.0, "limbo: chi-square z = {z:.2}, observed {obs:?}");
}

#[test]
fn shuffle_places_every_card_uniformly_at_the_ends() {
    let mut top = vec![0u64; 52];
    let mut bottom = vec![0u64; 52];
    let mut ace_of_clubs = vec![0u64; 52];
    draws(Game::Shuffle, |o| {
        let Outcome::Shuffle(d) = o else { unreachable!() };
        top[usize::from(d[0].0)] += 1;
        bottom[usize::from(d[51].0)] += 1;
        ace_of_clubs[d.iter().position(|&c| c == Card(51)).unwrap()] += 1;
    });
    assert_uniform("shuffle top card", &top);
    assert_uniform("shuffle bottom card", &bottom);
    assert_uniform("shuffle position of the ace of clubs", &ace_of_clubs);
}

#[test]
fn the_test_detects_the_stake_mapping_bias_only_at_scale() {
    // A sanity check that the statistic has teeth: a deliberately broken roulette (pocket 0
    // folded into 1) fails the same test.
    let mut bins = vec![0u64; 37];
    draws(Game::Roulette, |o| {
        let Outcome::Roulette(p) = o else { unreachable!() };
        bins[if p == 0 { 1 } else { p as usize }] += 1;
    });
    bins[0] = bins[1] / 2;
    let total: u64 = bins.iter().sum();
    #[allow(clippy::float_arithmetic)]
    let e = total as f64 / 37.0;
    #[allow(clippy::float_arithmetic)]
    let z = chi_square_z(&bins, &[e; 37]);
    #[allow(clippy::float_arithmetic)]
    let big = z > 5.0;
    assert!(big, "a biased roulette must fail: z = {z:.2}");
}

#[test]
#[allow(clippy::float_arithmetic)]
fn float_passes_kolmogorov_smirnov() {
    let mut xs = Vec::with_capacity(N as usize);
    draws(Game::Float, |o| {
        let Outcome::Float(w) = o else { unreachable!() };
        xs.push(w);
    });
    xs.sort_unstable();
    let n = xs.len() as f64;
    let d = xs
        .iter()
        .enumerate()
        .map(|(i, &w)| {
            let x = fair::word_to_float(w);
            (x - i as f64 / n).abs().max(((i + 1) as f64 / n - x).abs())
        })
        .fold(0f64, f64::max);
    // Critical value at alpha = 1e-6: sqrt(ln(2 / alpha) / 2) / sqrt(n).
    let critical = ((2.0f64 / 1e-6).ln() / 2.0).sqrt() / n.sqrt();
    assert!(d < critical, "KS D = {d:.6}, critical {critical:.6}");
}

#[test]
fn consecutive_roulette_outcomes_are_independent() {
    // Serial test: pairs (outcome of nonce k, outcome of nonce k+1) over 37 x 37 cells.
    let mut cells = vec![0u64; 37 * 37];
    let mut prev: Option<u32> = None;
    draws(Game::Roulette, |o| {
        let Outcome::Roulette(p) = o else { unreachable!() };
        if let Some(q) = prev {
            cells[(q * 37 + p) as usize] += 1;
        }
        prev = Some(p);
    });
    assert_uniform("roulette serial pairs", &cells);
}
