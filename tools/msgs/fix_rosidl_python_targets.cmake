# Fix-up for building ROS 2 interface packages against the pip ROS wheels.
#
# The wheels export their `<pkg>::<pkg>__rosidl_generator_py` targets with
# INTERFACE_INCLUDE_DIRECTORIES of the machine that built them
# (/opt/python/cp311-cp311/...). CMake refuses to generate when an imported
# target references a non-existent include directory.
#
# Include this file near the top of an interface package's CMakeLists.txt
# (before find_package/rosidl_generate_interfaces). It schedules a deferred
# call that runs at the end of the top-level directory's configure step, when
# every imported target exists, and then for each imported target:
#   * drops include directories that do not exist on this machine, and
#   * if it dropped any, adds this interpreter's Python3_INCLUDE_DIRS and
#     Python3_NumPy_INCLUDE_DIRS instead.
# Generator-expression entries are left untouched.

include_guard(GLOBAL)

function(_clamp_collect_imported_targets dir out_var)
  get_property(_targets DIRECTORY "${dir}" PROPERTY IMPORTED_TARGETS)
  get_property(_subdirs DIRECTORY "${dir}" PROPERTY SUBDIRECTORIES)
  foreach(_sub IN LISTS _subdirs)
    _clamp_collect_imported_targets("${_sub}" _sub_targets)
    list(APPEND _targets ${_sub_targets})
  endforeach()
  list(REMOVE_DUPLICATES _targets)
  set(${out_var} "${_targets}" PARENT_SCOPE)
endfunction()

function(clamp_fix_rosidl_python_targets)
  if(NOT Python3_INCLUDE_DIRS OR NOT Python3_NumPy_INCLUDE_DIRS)
    find_package(Python3 REQUIRED COMPONENTS Interpreter Development.Module NumPy)
  endif()
  set(_replacement ${Python3_INCLUDE_DIRS} ${Python3_NumPy_INCLUDE_DIRS})

  _clamp_collect_imported_targets("${CMAKE_SOURCE_DIR}" _targets)
  set(_fixed "")
  foreach(_tgt IN LISTS _targets)
    if(NOT TARGET "${_tgt}")
      # imported in a subdirectory and not visible here
      message(WARNING "fix_rosidl_python_targets: cannot reach imported target ${_tgt}")
      continue()
    endif()
    get_target_property(_incs "${_tgt}" INTERFACE_INCLUDE_DIRECTORIES)
    if(NOT _incs)
      continue()
    endif()
    set(_kept "")
    set(_dropped FALSE)
    foreach(_inc IN LISTS _incs)
      if(_inc MATCHES "\\$<" OR EXISTS "${_inc}")
        list(APPEND _kept "${_inc}")
      else()
        set(_dropped TRUE)
      endif()
    endforeach()
    if(_dropped)
      list(APPEND _kept ${_replacement})
      list(REMOVE_DUPLICATES _kept)
      set_property(TARGET "${_tgt}" PROPERTY INTERFACE_INCLUDE_DIRECTORIES "${_kept}")
      list(APPEND _fixed "${_tgt}")
    endif()
  endforeach()
  list(LENGTH _fixed _n)
  message(STATUS "fix_rosidl_python_targets: fixed include dirs of ${_n} imported target(s)")
endfunction()

cmake_language(DEFER DIRECTORY "${CMAKE_SOURCE_DIR}" CALL clamp_fix_rosidl_python_targets)
