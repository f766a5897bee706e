use baton_runtime::{Limits, Session};
use baton_sdk::wire::Viewer;

use crate::support::{minotaur, started};

#[test]
fn minotaur_loads_and_plays_and_restores() {
    let module = minotaur();
    assert_eq!(module.info().name, "minotaur");
    let mut s = started(module.clone(), &["ann", "bob"], r#"{"radius":3}"#, 7);
    let out = s
        .act("ann", r#"{"type":"move","dq":1,"dr":0}"#, 10)
        .unwrap();
    assert!(out.is_ok() || out.is_err());
    let before = s.view(Viewer::Player("ann".into())).unwrap().unwrap();
    let image = s.snapshot().unwrap();
    let digest = s.state_digest().unwrap();
    let mut r = Session::restore(module, Limits::default(), &image.encode()).unwrap();
    assert_eq!(r.state_digest().unwrap(), digest);
    assert_eq!(
        r.view(Viewer::Player("ann".into())).unwrap().unwrap(),
        before
    );
}
