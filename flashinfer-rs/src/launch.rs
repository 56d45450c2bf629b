//! The one door every kernel call goes through: [`Launch`], a fixed-size list of a call's
//! named device buffers on one stream, in the spirit of cudarc's `LaunchArgs`.
//!
//! A call site checks its sizes first (its plan's `check_batch`, see `crate::plan`), then lists its
//! buffers here, then hands the door the C call:
//!
//! ```text
//! let mut l = Launch::new(stream);
//! let logits = l.input("logits", &input.logits);
//! let ids = l.output_opt("ids", outputs.ids.as_mut());
//! l.check()?; // contexts, before a zero-token early return
//! // SAFETY: sizes checked by the plan's check_batch; the rest is the door's.
//! l.call(|p| unsafe { sys::fi_...(p.ro(logits), p.rw(ids), p.stream()) })
//! ```
//!
//! What the door does, in this order, for every call: each buffer's context against the
//! stream's, in the order they were listed (the first that differs is the error, named as the
//! API names it); then each buffer's device address, holding the guard that keeps cudarc's
//! stream ordering (event waits now, an event recorded when the guard drops) alive across the
//! call; then the context bound to the thread; then the C call, its status read through
//! [`check`]. Nothing here allocates or synchronises: buffers, addresses and guards live in
//! arrays of [`MAX_ARGS`] on the stack.

use std::ffi::c_void;
use std::sync::Arc;

use cudarc::driver::sys::CUdeviceptr;
use cudarc::driver::{
    CudaContext, CudaSlice, CudaStream, CudaView, CudaViewMut, DevicePtr, DevicePtrMut,
    DeviceSlice, SyncOnDrop,
};
use flashinfer_sys as sys;

use crate::error::{Error, Result};
use crate::ffi::check;
use crate::replay::ReplayView;
use crate::routing::Logits;

/// Most buffers one call passes: the fused MoE's 21 tensors, with room to spare.
pub(crate) const MAX_ARGS: usize = 24;

/// A device buffer of any element type that a kernel reads.
pub trait RoArg {
    fn arg_len(&self) -> usize;
    fn arg_stream(&self) -> &Arc<CudaStream>;
    fn arg_ptr<'s>(&'s self, stream: &'s CudaStream) -> (CUdeviceptr, SyncOnDrop<'s>);
}

/// A device buffer of any element type that a kernel writes.
pub trait RwArg {
    fn arg_len(&self) -> usize;
    fn arg_stream(&self) -> &Arc<CudaStream>;
    fn arg_ptr_mut<'s>(&'s mut self, stream: &'s CudaStream) -> (CUdeviceptr, SyncOnDrop<'s>);
}

macro_rules! ro_arg {
    ($($ty:ty),*) => {$(
        impl<T> RoArg for $ty {
            fn arg_len(&self) -> usize {
                self.len()
            }
            fn arg_stream(&self) -> &Arc<CudaStream> {
                self.stream()
            }
            fn arg_ptr<'s>(&'s self, stream: &'s CudaStream) -> (CUdeviceptr, SyncOnDrop<'s>) {
                self.device_ptr(stream)
            }
        }
    )*};
}
ro_arg!(CudaSlice<T>, CudaView<'_, T>, CudaViewMut<'_, T>);

macro_rules! rw_arg {
    ($($ty:ty),*) => {$(
        impl<T> RwArg for $ty {
            fn arg_len(&self) -> usize {
                self.len()
            }
            fn arg_stream(&self) -> &Arc<CudaStream> {
                self.stream()
            }
            fn arg_ptr_mut<'s>(&'s mut self, stream: &'s CudaStream) -> (CUdeviceptr, SyncOnDrop<'s>) {
                self.device_ptr_mut(stream)
            }
        }
    )*};
}
rw_arg!(CudaSlice<T>, CudaViewMut<'_, T>);

impl RoArg for Logits<'_> {
    fn arg_len(&self) -> usize {
        self.len()
    }
    fn arg_stream(&self) -> &Arc<CudaStream> {
        self.stream()
    }
    fn arg_ptr<'s>(&'s self, stream: &'s CudaStream) -> (CUdeviceptr, SyncOnDrop<'s>) {
        match self {
            Logits::F32(v) => v.device_ptr(stream),
            Logits::Bf16(v) => v.device_ptr(stream),
        }
    }
}

impl RwArg for ReplayView<'_> {
    fn arg_len(&self) -> usize {
        self.rows() * self.cols()
    }
    fn arg_stream(&self) -> &Arc<CudaStream> {
        self.stream()
    }
    fn arg_ptr_mut<'s>(&'s mut self, stream: &'s CudaStream) -> (CUdeviceptr, SyncOnDrop<'s>) {
        self.data_mut().device_ptr_mut(stream)
    }
}

/// Where a listed buffer's address is in [`Ptrs`]; an absent optional buffer's is 0.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Slot(usize);

impl Slot {
    const ABSENT: Slot = Slot(usize::MAX);
}

enum Buf<'a> {
    Ro(&'a dyn RoArg),
    Rw(&'a mut dyn RwArg),
}

/// One kernel call's buffers on `stream`, each with the name its context error gives and a
/// key `K` the call may read back with the addresses ([`Ptrs::keyed`]; `()` for most).
pub(crate) struct Launch<'a, K: Copy = ()> {
    stream: &'a CudaStream,
    /// The context bound before the call: the stream's, or the layer's that owns the call.
    bind: &'a CudaContext,
    /// The first listed buffer outside the stream's context.
    mismatch: Option<&'static str>,
    overflow: bool,
    args: [Option<(K, Buf<'a>)>; MAX_ARGS],
    len: usize,
}

impl<'a, K: Copy> Launch<'a, K> {
    /// A call on `stream`, binding the stream's context.
    pub(crate) fn new(stream: &'a Arc<CudaStream>) -> Self {
        Launch {
            stream,
            bind: stream.context(),
            mismatch: None,
            overflow: false,
            args: [const { None }; MAX_ARGS],
            len: 0,
        }
    }

    /// A call of a layer whose weights live in `ctx`: the stream must be in it (else
    /// `ContextMismatch { arg: "weights" }`, before any buffer), and `ctx` is bound.
    pub(crate) fn for_layer(stream: &'a Arc<CudaStream>, ctx: &'a Arc<CudaContext>) -> Self {
        let mut l = Launch::new(stream);
        l.bind = ctx;
        if stream.context().cu_ctx() != ctx.cu_ctx() {
            l.mismatch = Some("weights");
        }
        l
    }

    /// Checks that `arg`'s stream is in the call's context, without passing its address (a
    /// buffer the call uses through another launch, e.g. the router's inside a layer).
    pub(crate) fn context(&mut self, arg: &'static str, stream: &Arc<CudaStream>) {
        if self.mismatch.is_none() && stream.context().cu_ctx() != self.stream.context().cu_ctx() {
            self.mismatch = Some(arg);
        }
    }

    /// [`context`](Self::context) for each of `args`, in order.
    pub(crate) fn contexts<'s>(
        &mut self,
        args: impl IntoIterator<Item = (&'static str, &'s Arc<CudaStream>)>,
    ) {
        for (arg, stream) in args {
            self.context(arg, stream);
        }
    }

    /// Keeps `buf` (its context already checked) for the call.
    fn push(&mut self, key: K, buf: Buf<'a>) -> Slot {
        match self.args.get_mut(self.len) {
            Some(slot) => {
                *slot = Some((key, buf));
                self.len += 1;
                Slot(self.len - 1)
            }
            None => {
                self.overflow = true;
                Slot::ABSENT
            }
        }
    }

    /// A buffer the kernel reads, named `arg`, with `key`.
    pub(crate) fn keyed_input(&mut self, arg: &'static str, key: K, v: &'a dyn RoArg) -> Slot {
        self.context(arg, v.arg_stream());
        self.push(key, Buf::Ro(v))
    }

    /// A buffer the kernel writes, named `arg`, with `key`.
    pub(crate) fn keyed_output(&mut self, arg: &'static str, key: K, v: &'a mut dyn RwArg) -> Slot {
        self.context(arg, v.arg_stream());
        self.push(key, Buf::Rw(v))
    }

    /// The first listed buffer outside the stream's context, as today's
    /// `Error::ContextMismatch { arg }`; called before a zero-token early return, so that
    /// such a call is refused as any other (and by [`call`](Self::call) in any case).
    pub(crate) fn check(&self) -> Result<()> {
        if self.overflow {
            return Err(Error::Internal(format!(
                "a kernel call lists more than {MAX_ARGS} buffers"
            )));
        }
        match self.mismatch {
            Some(arg) => Err(Error::ContextMismatch { arg }),
            None => Ok(()),
        }
    }

    /// [`check`](Self::check)s, takes every buffer's address (holding its guard), binds the
    /// context and runs `f`, which builds the C call's arguments from the addresses (or fails
    /// before calling) and returns its status; the status becomes the result. The guards drop
    /// when this returns, after the C call has enqueued its work.
    ///
    /// What a call site's `unsafe` C call may rely on (the door's half of every SAFETY
    /// argument): each address in [`Ptrs`] is device memory of the stream's context (checked
    /// here for every listed buffer) or 0 for an absent optional one; the memory is borrowed,
    /// so alive, and its guard keeps cudarc's stream ordering until the C call returns; the
    /// context is current on this thread. The site's half: each buffer is large enough for
    /// the call (its size checks, made before listing) and the C arguments match the slots.
    pub(crate) fn try_call(
        self,
        f: impl FnOnce(&Ptrs<'_, K>) -> Result<sys::fi_status>,
    ) -> Result<()> {
        self.check()?;
        let Launch {
            stream,
            bind,
            args,
            len,
            ..
        } = self;
        let mut ptrs: [CUdeviceptr; MAX_ARGS] = [0; MAX_ARGS];
        let mut keys: [Option<K>; MAX_ARGS] = [None; MAX_ARGS];
        let mut guards: [Option<SyncOnDrop<'a>>; MAX_ARGS] = [const { None }; MAX_ARGS];
        for (i, arg) in args.into_iter().take(len).enumerate() {
            let Some((key, buf)) = arg else { continue };
            let (ptr, guard) = match buf {
                Buf::Ro(v) => v.arg_ptr(stream),
                Buf::Rw(v) => v.arg_ptr_mut(stream),
            };
            (ptrs[i], keys[i], guards[i]) = (ptr, Some(key), Some(guard));
        }
        // Bound after the addresses (as the layers always did): cudarc's event waits above
        // record a failure in the stream's context instead of returning it, and binding
        // checks the bound context for one before the C call runs.
        bind.bind_to_thread()?;
        let ptrs = Ptrs {
            ptrs: &ptrs[..len],
            keys: &keys[..len],
            stream: stream.cu_stream() as *mut c_void,
        };
        let status = f(&ptrs)?;
        let result = check(status);
        drop(guards);
        result
    }

    /// [`try_call`](Self::try_call) of a call that cannot fail before the C call.
    pub(crate) fn call(self, f: impl FnOnce(&Ptrs<'_, K>) -> sys::fi_status) -> Result<()> {
        self.try_call(|p| Ok(f(p)))
    }
}

impl<'a> Launch<'a> {
    /// A buffer the kernel reads, named `arg` (as the call's context error names it).
    pub(crate) fn input(&mut self, arg: &'static str, v: &'a (impl RoArg + 'a)) -> Slot {
        self.keyed_input(arg, (), v)
    }

    /// An optional buffer the kernel reads: address 0 when absent.
    pub(crate) fn input_opt(
        &mut self,
        arg: &'static str,
        v: Option<&'a (impl RoArg + 'a)>,
    ) -> Slot {
        v.map_or(Slot::ABSENT, |v| self.input(arg, v))
    }

    /// A buffer the kernel writes, named `arg`.
    pub(crate) fn output(&mut self, arg: &'static str, v: &'a mut (impl RwArg + 'a)) -> Slot {
        self.keyed_output(arg, (), v)
    }

    /// An optional buffer the kernel writes (a replay view, an optional output): address 0
    /// when absent.
    pub(crate) fn output_opt(
        &mut self,
        arg: &'static str,
        v: Option<&'a mut (impl RwArg + 'a)>,
    ) -> Slot {
        v.map_or(Slot::ABSENT, |v| self.output(arg, v))
    }
}

/// The addresses a [`Launch`] hands its C call, valid while the call runs.
pub(crate) struct Ptrs<'p, K> {
    ptrs: &'p [CUdeviceptr],
    keys: &'p [Option<K>],
    stream: *mut c_void,
}

impl<K: Copy> Ptrs<'_, K> {
    /// The address of the buffer at `slot` (0 for an absent optional one).
    pub(crate) fn get(&self, slot: Slot) -> CUdeviceptr {
        self.ptrs.get(slot.0).copied().unwrap_or(0)
    }

    /// [`get`](Self::get) as a pointer to read (null for an absent buffer).
    pub(crate) fn ro<T>(&self, slot: Slot) -> *const T {
        self.get(slot) as *const T
    }

    /// [`get`](Self::get) as a pointer to write (null for an absent buffer).
    pub(crate) fn rw<T>(&self, slot: Slot) -> *mut T {
        self.get(slot) as *mut T
    }

    /// The stream, as the C ABI takes it (a `cudaStream_t`).
    pub(crate) fn stream(&self) -> *mut c_void {
        self.stream
    }

    /// Every listed buffer's key and address, in listing order.
    pub(crate) fn keyed(&self) -> impl Iterator<Item = (K, CUdeviceptr)> + '_ {
        self.keys
            .iter()
            .zip(self.ptrs)
            .filter_map(|(k, p)| k.map(|k| (k, *p)))
    }
}
