//! Runtime benchmarks: `cargo bench -p baton-runtime` (release build).
//!
//! Prints, for minotaur with 8 players mid-game and for a session holding
//! ~1 MiB of live state: instantiate, one action, full snapshot, a one-action
//! delta, restore; the per-call cost of the instrumented component against
//! the plain one; and the rules in Wasm against the same rules run natively
//! through the SDK, as a ratio measured in the same run.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use baton_runtime::bindings::Rules;
use baton_runtime::{Image, Limits, RuleModule, Runtime, RuntimeConfig, Session};
use baton_sdk::wire::{Player, SetupArgs, Viewer};
use wasmtime::Store;
use wasmtime::component::{Component, Linker};

const DIRS: [(i32, i32); 6] = [(1, 0), (1, -1), (0, -1), (-1, 0), (-1, 1), (0, 1)];
const PLAYERS: usize = 8;

struct Stats {
    samples: Vec<Duration>,
}

impl Stats {
    fn of(mut samples: Vec<Duration>) -> Self {
        samples.sort_unstable();
        Stats { samples }
    }
    fn pct(&self, p: f64) -> Duration {
        let i = ((self.samples.len() as f64 - 1.0) * p).round() as usize;
        self.samples[i]
    }
    fn mean(&self) -> Duration {
        self.samples.iter().sum::<Duration>() / self.samples.len() as u32
    }
}

fn us(d: Duration) -> String {
    format!("{:.1} µs", d.as_secs_f64() * 1e6)
}

fn row(name: &str, stats: &Stats, extra: &str) {
    println!(
        "  {name:<44} p50 {:>10}  p99 {:>10}  mean {:>10}  {extra}",
        us(stats.pct(0.5)),
        us(stats.pct(0.99)),
        us(stats.mean())
    );
}

/// Times `f` alone: what it returns is dropped outside the timed region
/// (dropping a session returns its slot to the pool, which is not restore).
fn time<T>(n: usize, mut f: impl FnMut(usize) -> T) -> Stats {
    Stats::of(
        (0..n)
            .map(|i| {
                let start = Instant::now();
                let out = black_box(f(i));
                let elapsed = start.elapsed();
                drop(out);
                elapsed
            })
            .collect(),
    )
}

fn setup(players: usize, options: &str) -> SetupArgs {
    SetupArgs {
        session_id: "bench".into(),
        players: (0..players)
            .map(|i| Player::named(format!("p{i}")))
            .collect(),
        options: options.into(),
        seed: 42,
        now: 0,
    }
}

const MINOTAUR_OPTIONS: &str =
    r#"{"radius":6,"round_ms":10000,"max_rounds":1000000,"hit_points":99}"#;

/// The action of player `p` in round `r`: moves around, so rounds resolve.
fn minotaur_action(p: usize, r: usize) -> String {
    let (dq, dr) = DIRS[(p + r) % 6];
    format!(r#"{{"type":"move","dq":{dq},"dr":{dr}}}"#)
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    format!("{cpu}, {cores} cores")
}

fn main() {
    println!("baton-runtime benchmarks on {}", machine());
    let runtime = Runtime::new(RuntimeConfig::default()).expect("runtime");
    let minotaur = runtime.load(baton_games::MINOTAUR.bytes).expect("minotaur");
    let misbehave = runtime
        .load(baton_games::MISBEHAVE.bytes)
        .expect("misbehave");

    println!("\ninstantiate (fresh session, pooling allocator)");
    row(
        "minotaur",
        &time(2000, |_| {
            Session::new(minotaur.clone(), Limits::default()).expect("new")
        }),
        "",
    );

    println!("\nminotaur, {PLAYERS} players mid-game");
    let mut session = Session::new(minotaur.clone(), Limits::default()).expect("new");
    session
        .start(setup(PLAYERS, MINOTAUR_OPTIONS))
        .expect("start")
        .expect("accepted");
    let mut clock = 0;
    let mut round = 0;
    let play_round = |session: &mut Session, clock: &mut u64, round: &mut usize| {
        for p in 0..PLAYERS {
            *clock += 10;
            let _ = session
                .act(&format!("p{p}"), &minotaur_action(p, *round), *clock)
                .expect("act");
        }
        *round += 1;
    };
    for _ in 0..20 {
        play_round(&mut session, &mut clock, &mut round);
    }
    let acts = time(4000, |i| {
        clock += 10;
        let p = i % PLAYERS;
        if p == PLAYERS - 1 {
            round += 1;
        }
        session
            .act(&format!("p{p}"), &minotaur_action(p, round), clock)
            .expect("act")
    });
    row("act (Session::act, journaled)", &acts, "");
    let wasm_act = acts.mean();

    // The same calls natively, through the SDK's Instance.
    let mut native = baton_sdk::Instance::<minotaur::Minotaur>::new();
    native
        .start(setup(PLAYERS, MINOTAUR_OPTIONS))
        .expect("start");
    let (mut nclock, mut nround) = (0u64, 0usize);
    for _ in 0..20 {
        for p in 0..PLAYERS {
            nclock += 10;
            let _ = native.act(&format!("p{p}"), &minotaur_action(p, nround), nclock);
        }
        nround += 1;
    }
    let native_acts = time(4000, |i| {
        nclock += 10;
        let p = i % PLAYERS;
        if p == PLAYERS - 1 {
            nround += 1;
        }
        native.act(&format!("p{p}"), &minotaur_action(p, nround), nclock)
    });
    row("act natively (baton_sdk::Instance)", &native_acts, "");
    println!(
        "  Wasm / native ratio (mean act)                {:.2}x",
        wasm_act.as_secs_f64() / native_acts.mean().as_secs_f64()
    );
    row(
        "view (spectator)",
        &time(2000, |_| session.view(Viewer::Spectator).expect("view")),
        "",
    );

    snapshot_figures("minotaur", &minotaur, &mut session, |s, c| {
        s.act("p0", &minotaur_action(0, 1), c).expect("act").ok();
    });

    println!("\nsession holding ~1 MiB of live state (misbehave fixture, 1 MiB ballast)");
    let mut big = Session::new(misbehave.clone(), Limits::default()).expect("new");
    big.start(setup(1, "")).expect("start").expect("accepted");
    big.act("p0", r#"{"ballast":1048576}"#, 1)
        .expect("act")
        .expect("accepted");
    snapshot_figures("1 MiB", &misbehave, &mut big, |s, c| {
        s.act("p0", r#"{"add":1}"#, c)
            .expect("act")
            .expect("accepted");
    });

    plain_versus_instrumented(&runtime, &minotaur);
}

/// Full snapshot, one-action delta and restore figures for `session`.
fn snapshot_figures(
    name: &str,
    module: &Arc<RuleModule>,
    session: &mut Session,
    one_action: impl Fn(&mut Session, u64),
) {
    let memory = session.memory(0).expect("memory").len();
    // Where capture time goes: reading memory out through the accessor, and
    // hashing it (xxh3-128 per 4 KiB page).
    row(
        &format!("{name}: read all memory via accessor"),
        &time(300, |_| session.memory(0).expect("memory")),
        "in place, through the view",
    );
    let bytes = session.memory(0).expect("memory");
    row(
        &format!("{name}: hash all memory"),
        &time(300, |_| {
            bytes
                .chunks_exact(4096)
                .map(xxhash_rust::xxh3::xxh3_128)
                .fold(0u128, |a, h| a ^ h)
        }),
        "xxh3-128 per 4 KiB page",
    );
    let full = time(300, |_| session.snapshot().expect("snapshot"));
    let image = session.snapshot().expect("snapshot");
    row(
        &format!("{name}: full snapshot (capture)"),
        &full,
        &format!(
            "memory {} KiB, {} pages differ from fresh",
            memory / 1024,
            image.memories[0].pages.len()
        ),
    );
    let encoded = image.encode();
    row(
        &format!("{name}: encode full snapshot (zstd)"),
        &time(100, |_| image.encode()),
        &format!("{} KiB compressed", encoded.len().div_ceil(1024)),
    );

    let mut clock = session.now();
    let mut sizes = Vec::new();
    let mut pages = Vec::new();
    session.delta().expect("baseline");
    let deltas = Stats::of(
        (0..300)
            .map(|_| {
                clock += 10;
                one_action(session, clock);
                let start = Instant::now();
                let delta = session.delta().expect("delta");
                let elapsed = start.elapsed();
                pages.push(delta.page_count());
                sizes.push(delta.encode().len());
                elapsed
            })
            .collect(),
    );
    sizes.sort_unstable();
    pages.sort_unstable();
    row(
        &format!("{name}: one-action delta (capture)"),
        &deltas,
        &format!(
            "{} pages, {} B compressed (p50; max {} B)",
            pages[pages.len() / 2],
            sizes[sizes.len() / 2],
            sizes[sizes.len() - 1]
        ),
    );

    let shared = Arc::new(image.clone());
    let restore = time(300, |_| {
        Session::restore_image(module.clone(), Limits::default(), shared.clone()).expect("restore")
    });
    row(
        &format!("{name}: restore into a fresh instance"),
        &restore,
        "from a decoded image",
    );
    row(
        &format!("{name}: restore + state digest"),
        &time(300, |_| {
            let mut restored =
                Session::restore_image(module.clone(), Limits::default(), shared.clone())
                    .expect("restore");
            restored.state_digest().expect("digest")
        }),
        "the takeover's hash after a restore",
    );
    row(
        &format!("{name}: state digest"),
        &time(300, |_| session.state_digest().expect("digest")),
        "after a call: every page read and hashed",
    );
    row(
        &format!("{name}: decode + restore"),
        &time(300, |_| {
            Session::restore(module.clone(), Limits::default(), &encoded).expect("restore")
        }),
        "from snapshot bytes",
    );
    let _: &Image = &image;
}

/// The same calls through wasmtime's bindings on the plain component and on
/// the instrumented one: the rewrite must not change per-call cost.
fn plain_versus_instrumented(runtime: &Runtime, minotaur: &Arc<RuleModule>) {
    println!(
        "\nper-call cost: plain component vs instrumented (same calls, raw bindings, no journal)"
    );
    let engine = runtime.engine();
    let (instrumented, _) =
        baton_runtime::instrument::instrument(baton_games::MINOTAUR.bytes).expect("instrument");
    for (label, bytes) in [
        ("plain", baton_games::MINOTAUR.bytes.to_vec()),
        ("instrumented", instrumented),
    ] {
        let component = Component::new(engine, &bytes).expect("compile");
        // The instrumented component imports the accessor's view; these
        // calls never use it.
        let mut linker = Linker::<()>::new(engine);
        linker
            .instance(baton_runtime::instrument::VIEW_INTERFACE)
            .expect("view")
            .func_wrap("look", |_, _: (wasmtime::component::WasmList<u8>,)| Ok(()))
            .expect("look");
        let pre = baton_runtime::bindings::RulesPre::new(
            linker.instantiate_pre(&component).expect("pre"),
        )
        .expect("typed");
        let mut store = Store::new(engine, ());
        store.set_fuel(u64::MAX / 2).expect("fuel");
        store.set_epoch_deadline(u64::MAX / 2);
        let rules: Rules = pre.instantiate(&mut store).expect("instantiate");
        let game = rules.baton_rules_game();
        let setup = setup(PLAYERS, MINOTAUR_OPTIONS);
        let players: Vec<_> = setup
            .players
            .iter()
            .map(|p| baton_runtime::bindings::game::Player {
                id: p.id.clone(),
                name: p.name.clone(),
            })
            .collect();
        let wit_setup = baton_runtime::bindings::game::Setup {
            session_id: setup.session_id.clone(),
            players,
            options: setup.options.clone(),
            seed: setup.seed,
            now: 0,
        };
        game.call_start(&mut store, &wit_setup)
            .expect("start")
            .expect("accepted");
        let mut clock = 0;
        let mut round = 0;
        let acts = time(8000, |i| {
            clock += 10;
            let p = i % PLAYERS;
            if p == PLAYERS - 1 {
                round += 1;
            }
            game.call_act(
                &mut store,
                &format!("p{p}"),
                &minotaur_action(p, round),
                clock,
            )
            .expect("act")
        });
        row(&format!("act, {label}"), &acts, "");
        let status = time(20000, |_| game.call_status(&mut store).expect("status"));
        row(&format!("status, {label}"), &status, "");
    }
    let _ = minotaur;
}
