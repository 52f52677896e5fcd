//! Priority classes: a route's requests told apart into ordered classes, highest first, so that
//! under pressure the least important work is refused first. Each class may keep a share of
//! the route's capacity (`reservePercent`) that no lower class can take; a higher class can
//! take whatever lower classes are not using. The stages that hold capacity (bulkhead, rate
//! limit, adaptive limit) apply the shares; this module only says which class a request is.

use std::sync::Arc;

use crate::error::Errors;
use crate::faults::{IdentityPattern, CLIENT_ID_HEADER};
use crate::route::{RequestInfo, RouteMatch};
use crate::spec::{ClassMatchSpec, MatchSpec, PrioritySpec, StageMode};

/// More classes than this is a ranking nobody can reason about under pressure.
pub const MAX_CLASSES: usize = 8;

#[derive(Debug)]
pub struct Priority {
    /// Classes are told and counted, reserves only judged.
    pub dry_run: bool,
    /// Highest first.
    pub classes: Vec<Class>,
    /// As written, for equality across snapshots.
    spec: PrioritySpec,
}

impl PartialEq for Priority {
    fn eq(&self, other: &Self) -> bool {
        self.spec == other.spec
    }
}

#[derive(Debug)]
pub struct Class {
    pub name: Arc<str>,
    /// None: every request that reaches this class.
    matcher: Option<(RouteMatch, Vec<IdentityPattern>)>,
    pub reserve_percent: f64,
}

impl Priority {
    /// The index of the class `req` is of: the first whose match holds, else the lowest.
    pub fn classify(&self, req: &RequestInfo<'_>) -> usize {
        let caller = req.headers.get(CLIENT_ID_HEADER).and_then(|v| v.to_str().ok());
        let last = self.classes.len().saturating_sub(1);
        self.classes
            .iter()
            .position(|c| match &c.matcher {
                None => true,
                Some((m, ids)) => {
                    m.matches(req) && (ids.is_empty() || caller.is_some_and(|id| ids.iter().any(|p| p.matches(id))))
                }
            })
            .unwrap_or(last)
    }

    /// Each class's reserve, in percent, in class order.
    pub fn reserves(&self) -> Vec<f64> {
        self.classes.iter().map(|c| c.reserve_percent).collect()
    }

    pub fn name(&self, class: usize) -> Arc<str> {
        self.classes.get(class).map(|c| c.name.clone()).unwrap_or_else(|| Arc::from(""))
    }
}

pub(crate) fn compile(errs: &mut Errors<'_>, path: &str, s: &PrioritySpec) -> Priority {
    let n = s.classes.len();
    if n < 2 {
        errs.push(format!("{path}.classes"), "needs at least two classes: one class ranks nothing");
    }
    crate::validate::count(errs, &format!("{path}.classes"), n, MAX_CLASSES);
    let mut seen = std::collections::HashSet::new();
    let mut reserved = 0.0;
    let mut classes = Vec::with_capacity(n);
    for (i, c) in s.classes.iter().enumerate() {
        let at = format!("{path}.classes[{i}]");
        if crate::validate::name(errs, &format!("{at}.name"), &c.name) && !seen.insert(c.name.as_str()) {
            errs.push(format!("{at}.name"), format!("class {:?} is named twice", c.name));
        }
        if c.matches.is_none() && i + 1 < n {
            errs.push(
                format!("{at}.match"),
                "a class without match takes every request, so the classes after it would be empty; give it a match or put it last",
            );
        }
        let reserve = c.reserve_percent.unwrap_or(0.0);
        if !(0.0..100.0).contains(&reserve) {
            errs.push(format!("{at}.reservePercent"), format!("{reserve} is not a percentage in [0, 100)"));
        } else if i + 1 == n && reserve > 0.0 {
            errs.push(
                format!("{at}.reservePercent"),
                "the lowest class has no class below it to keep capacity from; reserve for higher classes instead",
            );
        }
        reserved += reserve;
        let matcher = c.matches.as_ref().and_then(|m| class_match(errs, &format!("{at}.match"), m));
        classes.push(Class { name: Arc::from(c.name.as_str()), matcher, reserve_percent: reserve });
    }
    if reserved >= 100.0 {
        errs.push(
            format!("{path}.classes"),
            format!("reserves add up to {reserved}%: the lowest class could never be admitted (keep them below 100)"),
        );
    }
    Priority { dry_run: s.mode == Some(StageMode::DryRun), classes, spec: s.clone() }
}

fn class_match(errs: &mut Errors<'_>, path: &str, m: &ClassMatchSpec) -> Option<(RouteMatch, Vec<IdentityPattern>)> {
    let route = MatchSpec {
        path: m.path.clone(),
        path_prefix: m.path_prefix.clone(),
        path_regex: m.path_regex.clone(),
        methods: m.methods.clone(),
        headers: m.headers.clone(),
        hosts: Vec::new(),
    };
    let ids = crate::faults::identities(errs, &format!("{path}.identities"), &m.identities);
    crate::compile::compile_match(errs, path, &route).map(|r| (r, ids))
}

#[cfg(test)]
mod tests {
    use http::{HeaderMap, Method};

    use super::*;
    use crate::error::ValidationError;

    fn compile_yaml(yaml: &str) -> Result<Priority, Vec<ValidationError>> {
        let spec: PrioritySpec = yaml_serde::from_str(yaml).unwrap();
        let mut out = Vec::new();
        let p = compile(&mut Errors { policy: "t/p".into(), out: &mut out }, "spec.defaults.priority", &spec);
        if out.is_empty() {
            Ok(p)
        } else {
            Err(out)
        }
    }

    const SHOP: &str = r#"
classes:
  - name: critical
    match: {pathPrefix: /checkout}
    reservePercent: 50
  - name: standard
    match: {identities: ["*.shop"]}
    reservePercent: 20
  - name: best-effort
"#;

    #[test]
    fn the_first_class_that_matches_wins_and_the_rest_are_the_lowest() {
        let p = compile_yaml(SHOP).unwrap();
        let mut h = HeaderMap::new();
        fn info<'a>(path: &'a str, headers: &'a HeaderMap) -> RequestInfo<'a> {
            RequestInfo { method: &Method::GET, path, host: None, headers }
        }
        assert_eq!(p.classify(&info("/checkout/1", &h)), 0);
        assert_eq!(p.classify(&info("/recommendations", &h)), 2);
        h.insert(CLIENT_ID_HEADER, "web.shop".parse().unwrap());
        assert_eq!(p.classify(&info("/recommendations", &h)), 1);
        assert_eq!(p.reserves(), vec![50.0, 20.0, 0.0]);
    }

    #[test]
    fn refuses_what_would_leave_a_class_empty_or_never_admitted() {
        let errs = compile_yaml("classes: [{name: only}]").unwrap_err();
        assert!(errs[0].message.contains("at least two classes"), "{errs:?}");
        let errs = compile_yaml("classes: [{name: a}, {name: b}]").unwrap_err();
        assert_eq!(errs[0].path, "spec.defaults.priority.classes[0].match");
        let errs = compile_yaml(
            "classes: [{name: a, match: {methods: [GET]}, reservePercent: 60}, {name: b, match: {methods: [PUT]}, reservePercent: 40}, {name: c}]",
        )
        .unwrap_err();
        assert!(errs[0].message.contains("add up to 100%"), "{errs:?}");
        let errs =
            compile_yaml("classes: [{name: a, match: {methods: [GET]}}, {name: b, reservePercent: 5}]").unwrap_err();
        assert_eq!(errs[0].path, "spec.defaults.priority.classes[1].reservePercent");
        let errs = compile_yaml("classes: [{name: a, match: {identities: [nope]}}, {name: a}]").unwrap_err();
        let paths: Vec<&str> = errs.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            ["spec.defaults.priority.classes[0].match.identities[0]", "spec.defaults.priority.classes[1].name"]
        );
    }
}
