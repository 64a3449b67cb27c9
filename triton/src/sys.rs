//! The part of Triton's C API this backend calls, declared by hand from the public headers
//! (triton-inference-server/core, include/triton/core/tritonbackend.h and tritonserver.h).
//! Nothing of Triton is linked at build time: the symbols resolve in the tritonserver process
//! that dlopens us. Enum values are the headers' C enums, spelled as in C so a grep finds both.

#![allow(non_camel_case_types)]

use std::ffi::c_char;

/// The TRITONBACKEND API this file follows: tritonbackend.h of Triton 2.51 (release 24.10).
/// A server with another major version, or an older minor one, is refused at initialisation.
pub const TRITONBACKEND_API_VERSION_MAJOR: u32 = 1;
pub const TRITONBACKEND_API_VERSION_MINOR: u32 = 19;

/// Opaque objects owned by the server.
#[repr(C)]
pub struct TRITONSERVER_Error {
    _private: [u8; 0],
}
#[repr(C)]
pub struct TRITONSERVER_Message {
    _private: [u8; 0],
}
#[repr(C)]
pub struct TRITONBACKEND_Backend {
    _private: [u8; 0],
}
#[repr(C)]
pub struct TRITONBACKEND_Model {
    _private: [u8; 0],
}
#[repr(C)]
pub struct TRITONBACKEND_ModelInstance {
    _private: [u8; 0],
}
#[repr(C)]
pub struct TRITONBACKEND_Request {
    _private: [u8; 0],
}
#[repr(C)]
pub struct TRITONBACKEND_Response {
    _private: [u8; 0],
}
#[repr(C)]
pub struct TRITONBACKEND_Input {
    _private: [u8; 0],
}
#[repr(C)]
pub struct TRITONBACKEND_Output {
    _private: [u8; 0],
}

// TRITONSERVER_Error_Code
pub type TRITONSERVER_Error_Code = u32;
pub const TRITONSERVER_ERROR_INTERNAL: TRITONSERVER_Error_Code = 1;
pub const TRITONSERVER_ERROR_INVALID_ARG: TRITONSERVER_Error_Code = 3;
pub const TRITONSERVER_ERROR_UNSUPPORTED: TRITONSERVER_Error_Code = 5;

// TRITONSERVER_DataType
pub type TRITONSERVER_DataType = u32;
pub const TRITONSERVER_TYPE_BOOL: TRITONSERVER_DataType = 1;
pub const TRITONSERVER_TYPE_FP32: TRITONSERVER_DataType = 11;

// TRITONSERVER_MemoryType
pub type TRITONSERVER_MemoryType = u32;
pub const TRITONSERVER_MEMORY_CPU: TRITONSERVER_MemoryType = 0;
pub const TRITONSERVER_MEMORY_CPU_PINNED: TRITONSERVER_MemoryType = 1;

// TRITONSERVER_InstanceGroupKind
pub type TRITONSERVER_InstanceGroupKind = u32;
pub const TRITONSERVER_INSTANCEGROUPKIND_GPU: TRITONSERVER_InstanceGroupKind = 2;

// TRITONSERVER_LogLevel
pub type TRITONSERVER_LogLevel = u32;
pub const TRITONSERVER_LOG_INFO: TRITONSERVER_LogLevel = 0;
pub const TRITONSERVER_LOG_ERROR: TRITONSERVER_LogLevel = 2;

/// TRITONSERVER_REQUEST_RELEASE_ALL: the backend is done with the request.
pub const TRITONSERVER_REQUEST_RELEASE_ALL: u32 = 1;
/// TRITONSERVER_RESPONSE_COMPLETE_FINAL: the last (here the only) response of a request.
pub const TRITONSERVER_RESPONSE_COMPLETE_FINAL: u32 = 1;

/// TRITONBACKEND_ArtifactType: only TRITONBACKEND_ARTIFACT_FILESYSTEM (0) exists.
pub type TRITONBACKEND_ArtifactType = u32;

pub type Error = *mut TRITONSERVER_Error;

extern "C" {
    pub fn TRITONSERVER_ErrorNew(code: TRITONSERVER_Error_Code, msg: *const c_char) -> Error;
    pub fn TRITONSERVER_ErrorDelete(error: Error);
    pub fn TRITONSERVER_ErrorMessage(error: Error) -> *const c_char;
    pub fn TRITONSERVER_DataTypeString(datatype: TRITONSERVER_DataType) -> *const c_char;
    pub fn TRITONSERVER_MessageSerializeToJson(
        message: *mut TRITONSERVER_Message,
        base: *mut *const c_char,
        byte_size: *mut usize,
    ) -> Error;
    pub fn TRITONSERVER_MessageDelete(message: *mut TRITONSERVER_Message) -> Error;
    pub fn TRITONSERVER_LogMessage(
        level: TRITONSERVER_LogLevel,
        filename: *const c_char,
        line: i32,
        msg: *const c_char,
    ) -> Error;

    pub fn TRITONBACKEND_ApiVersion(major: *mut u32, minor: *mut u32) -> Error;

    pub fn TRITONBACKEND_ModelName(model: *mut TRITONBACKEND_Model, name: *mut *const c_char) -> Error;
    pub fn TRITONBACKEND_ModelVersion(model: *mut TRITONBACKEND_Model, version: *mut u64) -> Error;
    pub fn TRITONBACKEND_ModelRepository(
        model: *mut TRITONBACKEND_Model,
        artifact_type: *mut TRITONBACKEND_ArtifactType,
        location: *mut *const c_char,
    ) -> Error;
    pub fn TRITONBACKEND_ModelConfig(
        model: *mut TRITONBACKEND_Model,
        config_version: u32,
        model_config: *mut *mut TRITONSERVER_Message,
    ) -> Error;
    pub fn TRITONBACKEND_ModelState(model: *mut TRITONBACKEND_Model, state: *mut *mut std::ffi::c_void) -> Error;
    pub fn TRITONBACKEND_ModelSetState(model: *mut TRITONBACKEND_Model, state: *mut std::ffi::c_void) -> Error;

    pub fn TRITONBACKEND_ModelInstanceName(
        instance: *mut TRITONBACKEND_ModelInstance,
        name: *mut *const c_char,
    ) -> Error;
    pub fn TRITONBACKEND_ModelInstanceKind(
        instance: *mut TRITONBACKEND_ModelInstance,
        kind: *mut TRITONSERVER_InstanceGroupKind,
    ) -> Error;
    pub fn TRITONBACKEND_ModelInstanceDeviceId(
        instance: *mut TRITONBACKEND_ModelInstance,
        device_id: *mut i32,
    ) -> Error;
    pub fn TRITONBACKEND_ModelInstanceModel(
        instance: *mut TRITONBACKEND_ModelInstance,
        model: *mut *mut TRITONBACKEND_Model,
    ) -> Error;
    pub fn TRITONBACKEND_ModelInstanceState(
        instance: *mut TRITONBACKEND_ModelInstance,
        state: *mut *mut std::ffi::c_void,
    ) -> Error;
    pub fn TRITONBACKEND_ModelInstanceSetState(
        instance: *mut TRITONBACKEND_ModelInstance,
        state: *mut std::ffi::c_void,
    ) -> Error;
    pub fn TRITONBACKEND_ModelInstanceReportStatistics(
        instance: *mut TRITONBACKEND_ModelInstance,
        request: *mut TRITONBACKEND_Request,
        success: bool,
        exec_start_ns: u64,
        compute_start_ns: u64,
        compute_end_ns: u64,
        exec_end_ns: u64,
    ) -> Error;
    pub fn TRITONBACKEND_ModelInstanceReportBatchStatistics(
        instance: *mut TRITONBACKEND_ModelInstance,
        batch_size: u64,
        exec_start_ns: u64,
        compute_start_ns: u64,
        compute_end_ns: u64,
        exec_end_ns: u64,
    ) -> Error;

    pub fn TRITONBACKEND_RequestInput(
        request: *mut TRITONBACKEND_Request,
        name: *const c_char,
        input: *mut *mut TRITONBACKEND_Input,
    ) -> Error;
    pub fn TRITONBACKEND_RequestOutputCount(request: *mut TRITONBACKEND_Request, count: *mut u32) -> Error;
    pub fn TRITONBACKEND_RequestOutputName(
        request: *mut TRITONBACKEND_Request,
        index: u32,
        output_name: *mut *const c_char,
    ) -> Error;
    pub fn TRITONBACKEND_RequestRelease(request: *mut TRITONBACKEND_Request, release_flags: u32) -> Error;

    pub fn TRITONBACKEND_InputProperties(
        input: *mut TRITONBACKEND_Input,
        name: *mut *const c_char,
        datatype: *mut TRITONSERVER_DataType,
        shape: *mut *const i64,
        dims_count: *mut u32,
        byte_size: *mut u64,
        buffer_count: *mut u32,
    ) -> Error;
    pub fn TRITONBACKEND_InputBuffer(
        input: *mut TRITONBACKEND_Input,
        index: u32,
        buffer: *mut *const std::ffi::c_void,
        buffer_byte_size: *mut u64,
        memory_type: *mut TRITONSERVER_MemoryType,
        memory_type_id: *mut i64,
    ) -> Error;

    pub fn TRITONBACKEND_ResponseNew(
        response: *mut *mut TRITONBACKEND_Response,
        request: *mut TRITONBACKEND_Request,
    ) -> Error;
    pub fn TRITONBACKEND_ResponseOutput(
        response: *mut TRITONBACKEND_Response,
        output: *mut *mut TRITONBACKEND_Output,
        name: *const c_char,
        datatype: TRITONSERVER_DataType,
        shape: *const i64,
        dims_count: u32,
    ) -> Error;
    pub fn TRITONBACKEND_OutputBuffer(
        output: *mut TRITONBACKEND_Output,
        buffer: *mut *mut std::ffi::c_void,
        buffer_byte_size: u64,
        memory_type: *mut TRITONSERVER_MemoryType,
        memory_type_id: *mut i64,
    ) -> Error;
    pub fn TRITONBACKEND_ResponseSend(response: *mut TRITONBACKEND_Response, send_flags: u32, error: Error) -> Error;
}
