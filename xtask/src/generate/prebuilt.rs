//! The bindings of a build against a prebuilt kernel library (`FLASHINFER_RS_KERNELS_LIB`),
//! flashinfer-sys/src/generated/prebuilt.rs, derived from `src/bindings.rs` (the one
//! description of the C ABI in Rust): every `extern "C"` function becomes a Rust function of
//! the same signature that calls through a table loaded once, at first use, by
//! `src/prebuilt.rs`. Nothing is written twice: a function added to the header reaches both
//! modes when the bindings are regenerated (`cargo xtask bindings` runs `generate` after
//! bindgen).

use anyhow::{anyhow, bail, Context, Result};

/// One `pub fn` of an `extern "C"` block.
struct Function {
    /// `#[doc = ...]` lines above it.
    attrs: Vec<String>,
    name: String,
    /// `name: type` pairs as bindgen wrote them.
    args: Vec<(String, String)>,
    /// Return type, `None` for `()`.
    ret: Option<String>,
}

/// `src/bindings.rs` with its `extern "C"` blocks replaced by calls through the table.
pub fn transform(bindings: &str) -> Result<String> {
    let mut out = String::new();
    let mut functions = Vec::new();
    let mut rest = bindings;
    const OPEN: &str = "unsafe extern \"C\" {\n";
    while let Some(at) = rest.find(OPEN) {
        out.push_str(&rest[..at]);
        let body_start = at + OPEN.len();
        let end = rest[body_start..]
            .find("\n}\n")
            .map(|e| body_start + e)
            .context("an extern block does not end with `}` on its own line")?;
        functions.push(parse(&rest[body_start..end])?);
        rest = &rest[end + 3..];
    }
    out.push_str(rest);
    for f in &functions {
        out.push_str(&wrapper(f)?);
    }
    out.push_str(&table(&functions));
    Ok(out)
}

fn parse(block: &str) -> Result<Function> {
    let (attrs, decl): (Vec<&str>, Vec<&str>) = block
        .lines()
        .map(str::trim)
        .partition(|l| l.starts_with("#["));
    let decl = decl.join(" ");
    let decl = decl
        .strip_prefix("pub fn ")
        .ok_or_else(|| anyhow!("not a function: {decl}"))?;
    let (Some(open), Some(close)) = (decl.find('('), decl.rfind(')')) else {
        bail!("no argument list: {decl}");
    };
    let name = decl[..open].trim().to_string();
    let args = decl[open + 1..close]
        .split(',')
        .map(str::trim)
        .filter(|a| !a.is_empty())
        .map(|a| {
            let (n, t) = a
                .split_once(':')
                .ok_or_else(|| anyhow!("{name}: argument `{a}` is not `name: type`"))?;
            Ok((n.trim().to_string(), t.trim().to_string()))
        })
        .collect::<Result<_>>()?;
    let tail = decl[close + 1..].trim().trim_end_matches(';').trim();
    let ret = tail.strip_prefix("->").map(|r| r.trim().to_string());
    Ok(Function {
        attrs: attrs.into_iter().map(String::from).collect(),
        name,
        args,
        ret,
    })
}

fn signature(f: &Function) -> (String, String) {
    let args: Vec<String> = f.args.iter().map(|(n, t)| format!("{n}: {t}")).collect();
    let ret = f
        .ret
        .as_ref()
        .map(|r| format!(" -> {r}"))
        .unwrap_or_default();
    (args.join(", "), ret)
}

/// What a function answers when the library cannot be used.
fn fallback(f: &Function) -> Result<&'static str> {
    Ok(match (f.name.as_str(), f.ret.as_deref()) {
        ("fi_last_error_message", _) => "crate::prebuilt::load_error()",
        (_, Some("fi_status")) => "crate::prebuilt::unavailable()",
        (_, Some("*const ::core::ffi::c_char")) => "c\"\".as_ptr()",
        (_, Some("i32")) => "0",
        (_, Some("usize")) => "0",
        (_, None) => "()",
        (name, Some(other)) => bail!("{name}: no fallback for return type {other}"),
    })
}

fn wrapper(f: &Function) -> Result<String> {
    let (args, ret) = signature(f);
    let names: Vec<&str> = f.args.iter().map(|(n, _)| n.as_str()).collect();
    let mut s = String::new();
    for a in &f.attrs {
        s.push_str(a);
        s.push('\n');
    }
    s.push_str(&format!(
        "///\n/// # Safety\n/// As the C function of the same name (csrc/flashinfer_rs.h).\n\
         pub unsafe fn {name}({args}){ret} {{\n    match crate::prebuilt::table() {{\n        \
         // SAFETY: the caller upholds the C function's contract; the table holds it.\n        \
         Some(t) => unsafe {{ (t.{name})({call}) }},\n        None => {fallback},\n    }}\n}}\n",
        name = f.name,
        call = names.join(", "),
        fallback = fallback(f)?,
    ));
    Ok(s)
}

fn table(functions: &[Function]) -> String {
    let mut fields = String::new();
    let mut loads = String::new();
    for f in functions {
        let (args, ret) = signature(f);
        let ty = format!("unsafe extern \"C\" fn({args}){ret}");
        fields.push_str(&format!("    {}: {ty},\n", f.name));
        loads.push_str(&format!(
            "                {name}: *library.get::<{ty}>(b\"{name}\\0\").map_err(|e| format!(\"{name}: {{e}}\"))?,\n",
            name = f.name
        ));
    }
    format!(
        "/// The C ABI's functions, resolved once from the prebuilt kernel library.\n\
         pub(crate) struct Table {{\n{fields}    _library: libloading::Library,\n}}\n\n\
         impl Table {{\n    /// Resolves every function of the C ABI in `library`.\n    ///\n    \
         /// # Safety\n    /// `library` must be a flashinfer-rs kernel library of this ABI version (its\n    \
         /// record was checked), so that each symbol has the type declared here.\n    \
         pub(crate) unsafe fn load(library: libloading::Library) -> Result<Table, String> {{\n        \
         // SAFETY: see the function's contract.\n        unsafe {{\n            Ok(Table {{\n{loads}                \
         _library: library,\n            }})\n        }}\n    }}\n}}\n"
    )
}
