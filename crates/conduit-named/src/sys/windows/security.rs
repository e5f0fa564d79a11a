//! Identity and access: the current user's SID, the user-only security
//! descriptor every pipe is created with, and the owner check a client runs
//! on the rendezvous pipe.

use std::io;
use std::os::windows::io::OwnedHandle;
use std::sync::OnceLock;

use windows_sys::core::PWSTR;
use windows_sys::Win32::Foundation::{LocalFree, ERROR_SUCCESS, HANDLE};
use windows_sys::Win32::Security::Authorization::{
    ConvertSidToStringSidW, ConvertStringSecurityDescriptorToSecurityDescriptorW, GetSecurityInfo,
    SDDL_REVISION_1, SE_KERNEL_OBJECT,
};
use windows_sys::Win32::Security::{
    GetTokenInformation, TokenUser, OWNER_SECURITY_INFORMATION, PSECURITY_DESCRIPTOR, PSID,
    SECURITY_ATTRIBUTES, TOKEN_QUERY, TOKEN_USER,
};
use windows_sys::Win32::System::Threading::{GetCurrentProcess, OpenProcessToken};

use conduit_core::{Error, Result};

use super::{check, owned, raw, wide};

/// Reads a NUL-terminated UTF-16 string.
///
/// # Safety
///
/// `p` must point to a readable, NUL-terminated UTF-16 string.
unsafe fn read_wide(p: *const u16) -> String {
    let mut n = 0;
    // SAFETY: the caller guarantees a NUL terminator within the allocation.
    while unsafe { *p.add(n) } != 0 {
        n += 1;
    }
    // SAFETY: the `n` units before the terminator are readable.
    String::from_utf16_lossy(unsafe { std::slice::from_raw_parts(p, n) })
}

/// The string form (`S-1-5-...`) of a SID.
///
/// # Safety
///
/// `sid` must point to a valid SID.
unsafe fn sid_string(sid: PSID) -> io::Result<String> {
    let mut text: PWSTR = std::ptr::null_mut();
    // SAFETY: `sid` is valid (caller); `text` receives a LocalAlloc'ed string.
    check(unsafe { ConvertSidToStringSidW(sid, &mut text) })?;
    // SAFETY: on success `text` is a NUL-terminated string.
    let out = unsafe { read_wide(text) };
    // SAFETY: `text` was allocated by ConvertSidToStringSidW with LocalAlloc
    // and is not used after this.
    unsafe { LocalFree(text.cast()) };
    Ok(out)
}

/// The current user's SID as a string, looked up once.
pub(super) fn user_sid() -> Result<String> {
    static SID: OnceLock<String> = OnceLock::new();
    if let Some(sid) = SID.get() {
        return Ok(sid.clone());
    }
    let sid = query_user_sid()
        .map_err(|e| Error::from_io("cannot find out the current user's SID", e))?;
    Ok(SID.get_or_init(|| sid).clone())
}

fn query_user_sid() -> io::Result<String> {
    let mut token: HANDLE = std::ptr::null_mut();
    // SAFETY: GetCurrentProcess returns a pseudo handle that is always
    // valid; `token` outlives the call.
    check(unsafe { OpenProcessToken(GetCurrentProcess(), TOKEN_QUERY, &mut token) })?;
    // SAFETY: the token handle the OpenProcessToken call just made returned
    // (it succeeded), owned by nobody else.
    let token = unsafe { owned(token) }?;
    let mut len = 0u32;
    // SAFETY: a null buffer of length 0 only asks for the needed size.
    unsafe { GetTokenInformation(raw(&token), TokenUser, std::ptr::null_mut(), 0, &mut len) };
    if len == 0 {
        return Err(io::Error::last_os_error());
    }
    // u64 storage keeps the TOKEN_USER at the start of the buffer aligned.
    let mut buf = vec![0u64; (len as usize).div_ceil(8)];
    // SAFETY: `buf` is writable for at least `len` bytes; `len` outlives the call.
    check(unsafe {
        GetTokenInformation(
            raw(&token),
            TokenUser,
            buf.as_mut_ptr().cast(),
            len,
            &mut len,
        )
    })?;
    // SAFETY: on success the buffer starts with a TOKEN_USER whose SID
    // points into the same buffer, which is alive until the end of this
    // function.
    unsafe {
        let user = &*buf.as_ptr().cast::<TOKEN_USER>();
        sid_string(user.User.Sid)
    }
}

/// A security descriptor from `ConvertStringSecurityDescriptorToSecurityDescriptorW`.
pub(super) struct SecurityDescriptor(PSECURITY_DESCRIPTOR);

// SAFETY: the descriptor is a LocalAlloc'ed block that is only read after
// its creation and freed once, on drop; sharing the pointer between threads
// is as safe as sharing any immutable memory.
unsafe impl Send for SecurityDescriptor {}
// SAFETY: see `Send`; no method mutates the descriptor.
unsafe impl Sync for SecurityDescriptor {}

impl SecurityDescriptor {
    /// Owner `sid`, and a protected DACL that allows `sid` everything and
    /// everyone else nothing.
    pub(super) fn user_only(sid: &str) -> io::Result<SecurityDescriptor> {
        let sddl = wide(&format!("O:{sid}D:P(A;;GA;;;{sid})"));
        let mut sd: PSECURITY_DESCRIPTOR = std::ptr::null_mut();
        // SAFETY: `sddl` is NUL-terminated; `sd` receives a LocalAlloc'ed
        // descriptor that we own; the size out-pointer may be null.
        check(unsafe {
            ConvertStringSecurityDescriptorToSecurityDescriptorW(
                sddl.as_ptr(),
                SDDL_REVISION_1,
                &mut sd,
                std::ptr::null_mut(),
            )
        })?;
        Ok(SecurityDescriptor(sd))
    }

    /// Non-inheritable security attributes that point at this descriptor.
    pub(super) fn attributes(&self) -> SECURITY_ATTRIBUTES {
        SECURITY_ATTRIBUTES {
            nLength: std::mem::size_of::<SECURITY_ATTRIBUTES>() as u32,
            lpSecurityDescriptor: self.0,
            bInheritHandle: 0,
        }
    }
}

impl Drop for SecurityDescriptor {
    fn drop(&mut self) {
        // SAFETY: the descriptor was LocalAlloc'ed by the conversion call
        // and is freed exactly once, here.
        unsafe { LocalFree(self.0) };
    }
}

/// True when the owner of the kernel object `h` is `sid`.
pub(super) fn owned_by(h: &OwnedHandle, sid: &str) -> io::Result<bool> {
    let mut owner: PSID = std::ptr::null_mut();
    let mut sd: PSECURITY_DESCRIPTOR = std::ptr::null_mut();
    // SAFETY: `h` is open; the out-pointers are valid; on success `sd` is a
    // LocalAlloc'ed descriptor that `owner` points into.
    let code = unsafe {
        GetSecurityInfo(
            raw(h),
            SE_KERNEL_OBJECT,
            OWNER_SECURITY_INFORMATION,
            &mut owner,
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            &mut sd,
        )
    };
    if code != ERROR_SUCCESS {
        return Err(io::Error::from_raw_os_error(code as i32));
    }
    let found = if owner.is_null() {
        Ok(String::new())
    } else {
        // SAFETY: `owner` points to the owner SID inside `sd`, still alive.
        unsafe { sid_string(owner) }
    };
    // SAFETY: `sd` was allocated by GetSecurityInfo and is not used after this.
    unsafe { LocalFree(sd) };
    Ok(found? == sid)
}
