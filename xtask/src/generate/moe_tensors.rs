//! The Rust side of `FI_MOE_TENSORS`: the header lists the tensors of `fi_moe_args` once, as
//! an X-macro the shim's marshalling expands; this step reads that list and writes
//! flashinfer-sys/src/generated/moe_tensors.rs, the `MoeTensor` enum that src/lib.rs includes.
//! Adding a tensor is then one line in the header and `cargo xtask generate`: the enum, its
//! names and its field accessors follow, and a name that is not a field of `fi_moe_args` fails
//! to compile.

use anyhow::{anyhow, bail, Result};

/// The names inside `#define FI_MOE_TENSORS(X) X(a) X(b) ...` (continuation lines included).
fn parse(header: &str) -> Result<Vec<String>> {
    let start = header
        .find("#define FI_MOE_TENSORS(X)")
        .ok_or_else(|| anyhow!("csrc/flashinfer_rs.h has no `#define FI_MOE_TENSORS(X)`"))?;
    let mut body = String::new();
    for line in header[start..].lines() {
        let continued = line.trim_end().ends_with('\\');
        body.push_str(line.trim_end().trim_end_matches('\\'));
        body.push(' ');
        if !continued {
            break;
        }
    }
    let body = &body["#define FI_MOE_TENSORS(X)".len()..];
    let mut names = Vec::new();
    for item in body.split_whitespace() {
        let name = item
            .strip_prefix("X(")
            .and_then(|s| s.strip_suffix(')'))
            .filter(|s| !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'))
            .ok_or_else(|| anyhow!("FI_MOE_TENSORS: `{item}` is not of the form X(name)"))?;
        if names.iter().any(|n| n == name) {
            bail!("FI_MOE_TENSORS lists `{name}` twice");
        }
        names.push(name.to_string());
    }
    if names.is_empty() {
        bail!("FI_MOE_TENSORS lists no tensor");
    }
    Ok(names)
}

fn camel(name: &str) -> String {
    name.split('_')
        .map(|w| {
            let mut c = w.chars();
            c.next()
                .map(|f| f.to_ascii_uppercase().to_string() + c.as_str())
                .unwrap_or_default()
        })
        .collect()
}

/// The Rust source of `MoeTensor` for the `FI_MOE_TENSORS` list of `header`, below the
/// generated-file line (generate.rs writes that).
pub fn generate(header: &str) -> Result<String> {
    let names = parse(header)?;
    let names = names.as_slice();
    let each = |f: &dyn Fn(&str, &str) -> String| -> String {
        names.iter().map(|n| f(n, &camel(n))).collect()
    };
    let variants = each(&|n, v| format!("    /// `fi_moe_args::{n}`.\n    {v},\n"));
    let all = each(&|_, v| format!("        MoeTensor::{v},\n"));
    let name_arms = each(&|n, v| format!("            MoeTensor::{v} => \"{n}\",\n"));
    let field_arms = each(&|n, v| format!("            MoeTensor::{v} => &args.{n},\n"));
    let field_mut_arms = each(&|n, v| format!("            MoeTensor::{v} => &mut args.{n},\n"));
    let count = names.len();
    Ok(format!(
        r#"
/// A tensor argument of [`fi_moe_args`], one per `FI_MOE_TENSORS` entry of
/// `csrc/flashinfer_rs.h`, in field order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum MoeTensor {{
{variants}}}

impl MoeTensor {{
    /// Every tensor, in field order.
    pub const ALL: [MoeTensor; {count}] = [
{all}    ];

    /// The field's name in `fi_moe_args` (and in upstream's argument list).
    pub const fn name(self) -> &'static str {{
        match self {{
{name_arms}        }}
    }}

    /// This tensor's field of `args`.
    pub fn field(self, args: &fi_moe_args) -> &fi_tensor {{
        match self {{
{field_arms}        }}
    }}

    /// This tensor's field of `args`, to fill.
    pub fn field_mut(self, args: &mut fi_moe_args) -> &mut fi_tensor {{
        match self {{
{field_mut_arms}        }}
    }}
}}
"#
    ))
}
