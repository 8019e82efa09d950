#!/bin/bash -e
# pi-gen substage: install the SignalTrain-Pi pedal into the image with firmware_cfg/provision.sh,
# the same script that provisions a Pi by hand, so an image and a hand-made box are identical.
#
# pi-gen runs this on the build machine, in this folder, with ROOTFS_DIR set; on_chroot runs
# commands inside the image (arm64; through qemu on an x86 build machine). files/ is filled by
# firmware_cfg/image/prepare.sh: files/signaltrain-pi holds device/, requirements/, firmware_cfg/
# and bundles/*.pedal to bake in.

SRC="files/signaltrain-pi"
if [ ! -d "${SRC}/device" ] || [ ! -x "${SRC}/firmware_cfg/provision.sh" ]; then
	echo "stage-pedal: ${PWD}/${SRC} is missing or incomplete; run firmware_cfg/image/prepare.sh first" >&2
	exit 1
fi

rm -rf "${ROOTFS_DIR}/tmp/signaltrain-pi"
cp -a "${SRC}" "${ROOTFS_DIR}/tmp/signaltrain-pi"

BUNDLE_ARGS=""
for b in "${SRC}"/bundles/*.pedal; do
	if [ -e "${b}" ]; then
		BUNDLE_ARGS="${BUNDLE_ARGS} --bundle /tmp/signaltrain-pi/bundles/$(basename "${b}")"
	fi
done

on_chroot << EOF
/tmp/signaltrain-pi/firmware_cfg/provision.sh --user "${FIRST_USER_NAME}"${BUNDLE_ARGS}
EOF

rm -rf "${ROOTFS_DIR}/tmp/signaltrain-pi"

# What went into this image: cat /etc/pedal/image-info on the box.
{
	echo "image=${IMG_NAME} ${IMG_DATE}"
	echo "pi_gen_release=${RELEASE}"
	cat "${SRC}/SOURCE" 2>/dev/null || true
} > "${ROOTFS_DIR}/etc/pedal/image-info"
