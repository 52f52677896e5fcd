//! A small renderer for the subset of Helm templates that `charts/bulwark` uses, so the chart
//! can be checked without a Helm binary: text with `{{ }}` actions and `{{-`/`-}}` trimming,
//! comments, `if`/`else if`/`else`/`end`, `$var :=` assignments, pipelines with parentheses,
//! fields of `.Values`, `.Release`, `.Chart` and of variables, and the functions `quote`,
//! `toYaml`, `indent`, `nindent`, `default`, `printf` (%s and %d), `not`, `eq`, `int`, `list`,
//! `omit`, `b64enc`, `genCA` and `genSignedCert`. The certificate functions return clearly
//! fake PEM text: the test checks the shape of what is rendered, Helm makes real ones.
//! Anything else is an error naming the template and the action, so a chart change that
//! steps outside the subset fails the test instead of being rendered wrongly.

use base64::Engine as _;
use serde_json::{json, Map, Value};

#[derive(Debug)]
enum Node {
    Text(String),
    Output(String),
    Assign(String, String),
    If(Vec<(String, Vec<Node>)>, Vec<Node>),
}

enum Token {
    Text(String),
    Action(String),
}

fn tokenize(src: &str, file: &str) -> Result<Vec<Token>, String> {
    let mut tokens = Vec::new();
    let mut rest = src;
    let mut trim_next = false;
    while let Some(open) = rest.find("{{") {
        let mut text = rest[..open].to_string();
        if trim_next {
            text = text.trim_start().to_string();
        }
        let after = &rest[open + 2..];
        let close = after.find("}}").ok_or_else(|| format!("{file}: unclosed {{{{"))?;
        let mut inner = &after[..close];
        if let Some(s) = inner.strip_prefix('-') {
            text = text.trim_end().to_string();
            inner = s;
        }
        trim_next = false;
        if let Some(s) = inner.strip_suffix('-') {
            trim_next = true;
            inner = s;
        }
        tokens.push(Token::Text(text));
        let inner = inner.trim();
        if !(inner.starts_with("/*") && inner.ends_with("*/")) {
            tokens.push(Token::Action(inner.to_string()));
        }
        rest = &after[close + 2..];
    }
    tokens.push(Token::Text(if trim_next { rest.trim_start().to_string() } else { rest.to_string() }));
    Ok(tokens)
}

fn parse(
    tokens: &mut std::iter::Peekable<std::vec::IntoIter<Token>>,
    file: &str,
    nested: bool,
) -> Result<(Vec<Node>, Option<String>), String> {
    let mut nodes = Vec::new();
    while let Some(t) = tokens.next() {
        match t {
            Token::Text(s) => nodes.push(Node::Text(s)),
            Token::Action(a) => {
                if a == "end" || a == "else" || a.starts_with("else if ") {
                    if !nested {
                        return Err(format!("{file}: unexpected {{{{ {a} }}}}"));
                    }
                    return Ok((nodes, Some(a)));
                }
                if let Some(cond) = a.strip_prefix("if ") {
                    let mut branches = Vec::new();
                    let mut cond = cond.to_string();
                    let otherwise = loop {
                        let (body, stop) = parse(tokens, file, true)?;
                        branches.push((cond.clone(), body));
                        match stop.as_deref() {
                            Some("end") => break Vec::new(),
                            Some("else") => {
                                let (body, stop) = parse(tokens, file, true)?;
                                if stop.as_deref() != Some("end") {
                                    return Err(format!("{file}: else without end"));
                                }
                                break body;
                            }
                            Some(s) if s.starts_with("else if ") => cond = s["else if ".len()..].to_string(),
                            _ => return Err(format!("{file}: if {cond} without end")),
                        }
                    };
                    nodes.push(Node::If(branches, otherwise));
                } else if let Some((var, expr)) = a.split_once(":=") {
                    nodes.push(Node::Assign(var.trim().to_string(), expr.trim().to_string()));
                } else {
                    let word = a.split_whitespace().next().unwrap_or_default();
                    if ["range", "with", "define", "include", "template", "block", "tpl"].contains(&word) {
                        return Err(format!("{file}: {{{{ {a} }}}} is outside the supported subset"));
                    }
                    nodes.push(Node::Output(a));
                }
            }
        }
    }
    if nested {
        return Err(format!("{file}: missing {{{{ end }}}}"));
    }
    Ok((nodes, None))
}

/// Renders `template` (named `file` in errors) with `.Values`, `.Release` and `.Chart`.
pub fn render(template: &str, file: &str, root: &Value) -> Result<String, String> {
    let mut tokens = tokenize(template, file)?.into_iter().peekable();
    let (nodes, _) = parse(&mut tokens, file, false)?;
    let mut out = String::new();
    let mut vars = Map::new();
    exec(&nodes, root, &mut vars, &mut out, file)?;
    Ok(out)
}

fn exec(
    nodes: &[Node],
    root: &Value,
    vars: &mut Map<String, Value>,
    out: &mut String,
    file: &str,
) -> Result<(), String> {
    for n in nodes {
        match n {
            Node::Text(t) => out.push_str(t),
            Node::Output(p) => {
                out.push_str(&text(&eval_pipeline(p, root, vars).map_err(|e| format!("{file}: {{{{ {p} }}}}: {e}"))?))
            }
            Node::Assign(var, p) => {
                let v = eval_pipeline(p, root, vars).map_err(|e| format!("{file}: {{{{ {var} := {p} }}}}: {e}"))?;
                vars.insert(var.clone(), v);
            }
            Node::If(branches, otherwise) => {
                let mut taken = false;
                for (cond, body) in branches {
                    let v = eval_pipeline(cond, root, vars).map_err(|e| format!("{file}: {{{{ if {cond} }}}}: {e}"))?;
                    if truthy(&v) {
                        exec(body, root, vars, out, file)?;
                        taken = true;
                        break;
                    }
                }
                if !taken {
                    exec(otherwise, root, vars, out, file)?;
                }
            }
        }
    }
    Ok(())
}

fn truthy(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64() != Some(0.0),
        Value::String(s) => !s.is_empty(),
        Value::Array(a) => !a.is_empty(),
        Value::Object(o) => !o.is_empty(),
    }
}

fn text(v: &Value) -> String {
    match v {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Splits on `sep` outside quotes and parentheses.
fn split_top(s: &str, sep: char) -> Vec<String> {
    let (mut parts, mut cur, mut depth, mut quoted) = (Vec::new(), String::new(), 0, false);
    for c in s.chars() {
        match c {
            '"' => quoted = !quoted,
            '(' if !quoted => depth += 1,
            ')' if !quoted => depth -= 1,
            _ => {}
        }
        if c == sep && depth == 0 && !quoted {
            parts.push(std::mem::take(&mut cur));
        } else {
            cur.push(c);
        }
    }
    parts.push(cur);
    parts.into_iter().map(|p| p.trim().to_string()).filter(|p| !p.is_empty()).collect()
}

fn eval_pipeline(p: &str, root: &Value, vars: &Map<String, Value>) -> Result<Value, String> {
    let mut piped: Option<Value> = None;
    for command in split_top(p, '|') {
        let words = split_top(&command, ' ');
        let (head, args) = words.split_first().ok_or("empty command")?;
        let is_function = head.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
            && !["nil", "true", "false"].contains(&head.as_str());
        piped = Some(if is_function {
            let mut values = args.iter().map(|a| operand(a, root, vars)).collect::<Result<Vec<_>, _>>()?;
            values.extend(piped.take());
            call(head, values)?
        } else {
            if !args.is_empty() || piped.is_some() {
                return Err(format!("{command:?} is not a function"));
            }
            operand(head, root, vars)?
        });
    }
    piped.ok_or_else(|| "empty pipeline".into())
}

fn operand(word: &str, root: &Value, vars: &Map<String, Value>) -> Result<Value, String> {
    if let Some(inner) = word.strip_prefix('(').and_then(|w| w.strip_suffix(')')) {
        return eval_pipeline(inner, root, vars);
    }
    if let Some(s) = word.strip_prefix('"').and_then(|w| w.strip_suffix('"')) {
        return Ok(Value::String(s.replace("\\\"", "\"")));
    }
    match word {
        "nil" => return Ok(Value::Null),
        "true" => return Ok(Value::Bool(true)),
        "false" => return Ok(Value::Bool(false)),
        "." => return Ok(root.clone()),
        _ => {}
    }
    if let Ok(n) = word.parse::<i64>() {
        return Ok(json!(n));
    }
    let (base, path) = if let Some(rest) = word.strip_prefix('.') {
        (root.clone(), rest)
    } else if word.starts_with('$') {
        let (var, rest) = word.split_once('.').unwrap_or((word, ""));
        (vars.get(var).cloned().ok_or_else(|| format!("undefined variable {var}"))?, rest)
    } else {
        return Err(format!("cannot read {word:?}"));
    };
    let mut v = base;
    for key in path.split('.').filter(|k| !k.is_empty()) {
        v = match v {
            Value::Object(mut m) => m.remove(key).unwrap_or(Value::Null),
            Value::Null => Value::Null,
            other => return Err(format!("{word}: {key} of a non-map {other}")),
        };
    }
    Ok(v)
}

fn fake_pem(kind: &str, about: &str) -> String {
    let body = base64::engine::general_purpose::STANDARD.encode(format!("rendered by the test renderer: {about}"));
    format!("-----BEGIN {kind}-----\n{body}\n-----END {kind}-----\n")
}

fn call(name: &str, args: Vec<Value>) -> Result<Value, String> {
    let arity = |n: usize| {
        if args.len() == n {
            Ok(())
        } else {
            Err(format!("{name} takes {n} arguments, got {}", args.len()))
        }
    };
    let int = |v: &Value| {
        v.as_i64().or_else(|| v.as_str().and_then(|s| s.parse().ok())).ok_or(format!("{name}: {v} is not a number"))
    };
    Ok(match name {
        "quote" => {
            arity(1)?;
            Value::String(serde_json::to_string(&text(&args[0])).map_err(|e| e.to_string())?)
        }
        "toYaml" => {
            arity(1)?;
            let y = yaml_serde::to_string(&args[0]).map_err(|e| e.to_string())?;
            Value::String(y.trim_end().to_string())
        }
        "indent" | "nindent" => {
            arity(2)?;
            let pad = " ".repeat(usize::try_from(int(&args[0])?).map_err(|e| e.to_string())?);
            let indented: Vec<String> = text(&args[1]).lines().map(|l| format!("{pad}{l}")).collect();
            Value::String(format!("{}{}", if name == "nindent" { "\n" } else { "" }, indented.join("\n")))
        }
        "default" => {
            arity(2)?;
            if truthy(&args[1]) {
                args[1].clone()
            } else {
                args[0].clone()
            }
        }
        "printf" => {
            let (format, mut rest) = args.split_first().ok_or("printf needs a format")?;
            let mut out = String::new();
            let mut chars = text(format).chars().collect::<Vec<_>>().into_iter();
            while let Some(c) = chars.next() {
                if c == '%' {
                    match chars.next() {
                        Some('s') | Some('d') | Some('v') => {
                            let (first, others) = rest.split_first().ok_or("printf: too few arguments")?;
                            out.push_str(&text(first));
                            rest = others;
                        }
                        other => return Err(format!("printf: %{other:?} is outside the subset")),
                    }
                } else {
                    out.push(c);
                }
            }
            Value::String(out)
        }
        "not" => {
            arity(1)?;
            Value::Bool(!truthy(&args[0]))
        }
        "eq" => {
            arity(2)?;
            Value::Bool(args[0] == args[1])
        }
        "int" => {
            arity(1)?;
            json!(int(&args[0])?)
        }
        "list" => Value::Array(args),
        "omit" => {
            let (map, keys) = args.split_first().ok_or("omit needs a map")?;
            let mut m = map.as_object().cloned().ok_or("omit: not a map")?;
            for k in keys {
                m.remove(&text(k));
            }
            Value::Object(m)
        }
        "b64enc" => {
            arity(1)?;
            Value::String(base64::engine::general_purpose::STANDARD.encode(text(&args[0])))
        }
        "genCA" => {
            arity(2)?;
            let cn = text(&args[0]);
            json!({ "Cert": fake_pem("CERTIFICATE", &format!("CA {cn}")), "Key": fake_pem("RSA PRIVATE KEY", &cn) })
        }
        "genSignedCert" => {
            arity(5)?;
            let cn = text(&args[0]);
            if args[4].get("Cert").is_none() {
                return Err("genSignedCert: the fifth argument must be a CA".into());
            }
            json!({ "Cert": fake_pem("CERTIFICATE", &cn), "Key": fake_pem("RSA PRIVATE KEY", &cn) })
        }
        _ => return Err(format!("function {name} is outside the supported subset")),
    })
}
